#!/usr/bin/env bash
# Builds the service's container image without a Docker engine and checks it the way a deployment
# runs it. CI runs it after the tests (.ci/run); by hand, as root on a Debian host:
#
#   bash deploy/check-image.sh
#
# 1. Installs podman, buildah, debootstrap, fuse-overlayfs and runc from Debian when missing.
# 2. Makes localhost/python:3.11-slim-bookworm with debootstrap (no registry is reachable here), a
#    stand-in for the official slim image with the same Python (Debian bookworm's 3.11). It is kept
#    between runs and built only when missing.
# 3. Writes a containers.conf for this kind of machine (crun cannot set podman's default rlimits
#    and refuses hybrid cgroups: fixed ulimits and runc) and a pip.conf from the host's
#    `pip config list` (index, extra indexes, find-links), bind-mounted read-only into the build as
#    /etc/pip.conf with any local index or wheel folder it names. The host's CA bundle (a
#    TLS-intercepting proxy's) goes in as the Dockerfile documents it: the build secret pip_cert and
#    the PIP_CERT build argument.
# 4. `podman build --format docker` (podman's default OCI format drops SHELL and HEALTHCHECK).
# 5. Runs the image on loopback and checks: it runs as UID 10001; /readyz answers within the
#    HEALTHCHECK's start period; /v1/predict and /v1/explain of a photo (scikit-image's Chelsea, a
#    cat, when .venv has it); the HEALTHCHECK command is healthy; SIGTERM during an explanation
#    (`podman stop -t 40`) lets it finish with 200 and the container exits 0; a second start on the
#    same cache volume reuses the tuned batch size (no tuning); a `--read-only --tmpfs /tmp` start
#    (as deploy/kubernetes runs it) gets ready with no OpenVINO telemetry warnings.
# It prints the image's size and each phase's time, and exits non-zero on the first failed check.
# The containers and the volume it starts are removed on exit.
#
# Environment (optional):
#   IMAGE=scorecam-service:check      the tag built and checked
#   TORCH_INDEX=<url>                 an index with torch 2.14.1 and torchvision 0.29.1 for Python 3.11.
#                                     Default: the Dockerfile's (PyTorch's CPU index) where it is
#                                     reachable, else the host's pip index: PyPI, whose torch is the
#                                     CUDA build (a 6.26 GB image), as on CI machines.
#   KEEP_IMAGE=auto|1|0               keep the built image for the next run (auto: when 30 GB stay free)
#   CHECK_PORT=<port>                 the loopback port (default: a free one)
#   DEBIAN_MIRROR=<url>               for debootstrap (default: the host's apt source for bookworm)
#
# buildah leaves the mount points of `-v` (an empty /etc/pip.conf, empty folders for local indexes) in
# the image it builds, as it leaves /run/.containerenv: an image built with docker has none of them.
# Disk: about 12 GB at the peak under /var/lib/containers; keep 20 GB free. To give it all back:
#   podman system reset --force && rm -rf /var/lib/containers/storage
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-scorecam-service:check}
BASE=localhost/python:3.11-slim-bookworm
KEEP_IMAGE=${KEEP_IMAGE:-auto}
VOLUME=scorecam-check-cache
PREFIX=scorecam-check
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

work=$(mktemp -d /tmp/scorecam-check.XXXXXX)
started_containers=()
timings=()
phase_name="" phase_start=0
script_start=$(date +%s.%N)

log() { printf '%s\n' "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
phase() {
  end_phase
  phase_name=$1 phase_start=$(date +%s.%N)
  log "== $phase_name"
}
end_phase() {
  [ -n "$phase_name" ] && timings+=("$(printf '%-58s %7s s' "$phase_name" "$(seconds_since "$phase_start")")")
  phase_name=""
}

cleanup() {
  local status=$?
  end_phase
  set +e
  for name in "${started_containers[@]}"; do podman rm -f -t 0 "$name" >/dev/null 2>&1; done
  podman volume rm -f "$VOLUME" >/dev/null 2>&1
  keep_image || { podman rmi -f "$IMAGE" >/dev/null 2>&1 && log "removed $IMAGE (KEEP_IMAGE=$KEEP_IMAGE)"; }
  rm -rf "$work"
  log ""
  log "== times"
  printf '%s\n' "${timings[@]}" >&2
  log "$(printf '%-58s %7s s' total "$(seconds_since "$script_start")")"
  [ "$status" -eq 0 ] && log "image check passed" || log "image check FAILED (exit $status)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM  # so that an interrupted run cleans up too

keep_image() {
  case $KEEP_IMAGE in
    1 | true | yes) return 0 ;;
    0 | false | no) return 1 ;;
  esac
  local free_kb
  free_kb=$(df -Pk /var/lib | awk 'NR == 2 { print $4 }')
  [ "$free_kb" -gt $((30 * 1024 * 1024)) ]
}

# --- 1. prerequisites ---------------------------------------------------------------------------

install_prerequisites() {
  local missing=() p
  for p in podman buildah debootstrap fuse-overlayfs runc; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install), or run this as root"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- 2. the base image ----------------------------------------------------------------------------

debian_mirror() {  # the first bookworm (non-security) source of the host's apt configuration
  [ -n "${DEBIAN_MIRROR:-}" ] && { echo "$DEBIAN_MIRROR"; return; }
  local found
  found=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
    /^URIs:/ { uri = $2 } /^Suites:/ { suites = $0 }
    /^$/ { if (uri !~ /security/ && suites ~ /bookworm( |$)/) { print uri; exit } uri = ""; suites = "" }
    END { if (uri !~ /security/ && suites ~ /bookworm( |$)/) print uri }' | head -n 1)
  [ -z "$found" ] && found=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" && $3 == "bookworm" && $2 !~ /security/ { print $2; exit }')
  echo "${found:-http://deb.debian.org/debian}"
}

build_base_image() {
  local rootfs mirror
  rootfs=$(mktemp -d /var/tmp/scorecam-rootfs.XXXXXX)
  mirror=$(debian_mirror)
  log "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
}

# --- 3. the build's configuration -----------------------------------------------------------------

host_ca_bundle() {
  local candidate
  for candidate in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" \
    "$(pip_config | awk -F= '/^[^=]*\.cert=/ { gsub(/\047/, "", $2); print $2; exit }')" \
    /etc/ssl/certs/ca-certificates.crt; do
    [ -n "$candidate" ] && [ -f "$candidate" ] && { echo "$candidate"; return; }
  done
}

pip_config() { "$PY" -m pip config list 2>/dev/null || true; }

# Writes $work/pip.conf from the host's pip settings, and prints the local folders they name.
write_pip_conf() {
  pip_config | "$PY" -c '
import ast, os, sys
KEYS = {"index-url", "extra-index-url", "find-links", "trusted-host", "timeout", "default-timeout", "retries"}
found = {}
for line in sys.stdin:
    name, _, value = line.strip().partition("=")
    section, _, key = name.rpartition(".")
    if key not in KEYS or not value:
        continue
    key = "timeout" if key == "default-timeout" else key
    # the environment overrides the files, as for pip itself
    if section == ":env:" or key not in found:
        found[key] = ast.literal_eval(value)
with open(sys.argv[1], "w") as conf:
    conf.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(found.items())))
folders = set()
for key in ("index-url", "extra-index-url", "find-links"):
    for entry in found.get(key, "").split():
        path = entry[len("file://"):] if entry.startswith("file://") else entry
        if path.startswith("/") and os.path.exists(path):
            # a local simple index links to files beside it (../../files): mount its parent
            folders.add(os.path.dirname(path.rstrip("/")) if os.path.basename(path.rstrip("/")) == "simple" else path)
print("\n".join(sorted(folders)))
' "$work/pip.conf"
}

host_index_url() {
  pip_config | awk -F= '/^[^=]*\.index-url=/ && !/extra-index-url/ { gsub(/\047/, "", $2); print $2; exit }'
}

# --- 5. checks on the running image ---------------------------------------------------------------

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_container() {  # name, then podman run options; the image's own command
  local name=$1
  shift
  started_containers+=("$name")
  # (podman's complaints that no systemd runs the HEALTHCHECK periodically, here and at stop, are expected)
  podman run -d --name "$name" -p "127.0.0.1:$PORT:8000" "$@" "$IMAGE" >/dev/null 2>"$work/$name.run" \
    || { cat "$work/$name.run" >&2; die "podman run $name"; }
}

wait_ready() {  # name, limit in seconds: prints the seconds /readyz took to answer 200
  local name=$1 limit=$2 start code
  start=$(date +%s.%N)
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/readyz" || true)
    [ "$code" = 200 ] && break
    if [ "$(podman inspect -f '{{.State.Running}}' "$name")" != true ]; then
      podman logs "$name" 2>&1 | tail -n 40 >&2
      die "$name exited before it was ready"
    fi
    if awk -v s="$(seconds_since "$start")" -v l="$limit" 'BEGIN { exit !(s > l) }'; then
      podman logs "$name" 2>&1 | tail -n 40 >&2
      die "$name not ready within $limit s (the HEALTHCHECK's start period)"
    fi
    sleep 1
  done
  seconds_since "$start"
}

stop_and_expect_exit_0() {
  local name=$1 code
  podman stop -t 40 "$name" >/dev/null 2>"$work/$name.stop" || { cat "$work/$name.stop" >&2; die "podman stop $name"; }
  code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
  [ "$code" = 0 ] || { podman logs "$name" 2>&1 | tail -n 30 >&2; die "$name exited with $code after SIGTERM"; }
}

make_photo() {  # a real photo where scikit-image is installed (Chelsea, a tabby cat), else a drawn one
  "$PY" - "$work/photo.jpg" <<'EOF'
import sys
from PIL import Image, ImageDraw
try:
    from skimage import data
    Image.fromarray(data.chelsea()).save(sys.argv[1], quality=92)
    print("chelsea")
except ImportError:
    image = Image.new("RGB", (451, 300), (90, 140, 200))
    ImageDraw.Draw(image).ellipse((120, 40, 330, 260), fill=(200, 150, 90))
    image.save(sys.argv[1], quality=92)
    print("drawn")
EOF
}

check_predict() {
  curl -sf --max-time 60 -F "image=@$work/photo.jpg" -F top_k=3 "http://127.0.0.1:$PORT/v1/predict" >"$work/predict.json" \
    || die "/v1/predict did not answer 2xx"
  "$PY" - "$work/predict.json" "$photo" <<'EOF' || die "/v1/predict answered $(head -c 400 "$work/predict.json")"
import json, sys
answer = json.load(open(sys.argv[1]))
top = answer["predictions"][0]
assert (answer["width"], answer["height"]) == (451, 300), answer
if sys.argv[2] == "chelsea":  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top["class_index"] in range(281, 286), top
print(f"predict: {top['label']} {top['score']:.3f} in {answer['timing_ms']['total_ms']:.0f} ms", file=sys.stderr)
EOF
}

check_explain() {  # a JSON explanation with an overlay the size of the photo
  curl -sf --max-time 300 -F "image=@$work/photo.jpg" -F top_k=1 -F outputs=overlay \
    "http://127.0.0.1:$PORT/v1/explain" >"$work/explain.json" || die "/v1/explain did not answer 2xx"
  "$PY" - "$work/explain.json" <<'EOF' || die "/v1/explain answered $(head -c 400 "$work/explain.json")"
import base64, io, json, sys
from PIL import Image
answer = json.load(open(sys.argv[1]))
explanation = answer["explanations"][0]
overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
assert overlay.size == (451, 300), overlay.size
print(f"explain: class {explanation['class_index']}, overlay {overlay.size}, "
      f"{answer['timing_ms']['total_ms'] / 1000:.1f} s", file=sys.stderr)
EOF
}

# --- the run --------------------------------------------------------------------------------------

phase "prerequisites (apt: podman buildah debootstrap fuse-overlayfs runc)"
install_prerequisites
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$work/containers.conf

phase "base image $BASE (debootstrap; kept between runs)"
if podman image exists "$BASE"; then log "already built"; else build_base_image; fi

phase "image build ($IMAGE)"
mounts=(-v "$work/pip.conf:/etc/pip.conf:ro")
while IFS= read -r folder; do
  [ -n "$folder" ] && mounts+=(-v "$folder:$folder:ro")
done < <(write_pip_conf)
build_args=(--build-arg "PYTHON_IMAGE=$BASE")
ca=$(host_ca_bundle || true)
if [ -n "$ca" ]; then  # as the Dockerfile documents it for docker build: a secret, never in a layer
  build_args+=(--secret "id=pip_cert,src=$ca" --build-arg PIP_CERT=/run/secrets/pip_cert)
fi
if [ -n "${TORCH_INDEX:-}" ]; then
  build_args+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
elif ! curl -sf --max-time 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
  torch_index=$(host_index_url)
  log "PyTorch's CPU index is unreachable: torch comes from ${torch_index:-PyPI} (the CUDA build)"
  build_args+=(--build-arg "TORCH_INDEX=${torch_index:-https://pypi.org/simple}")
fi  # else the Dockerfile's default: the CPU build from PyTorch's index
log "pip.conf: $(tr '\n' ' ' <"$work/pip.conf")"
log "mounts: ${mounts[*]}"
log "build args: ${build_args[*]}"
previous=$(podman image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build --format docker --isolation=chroot --network=host --layers \
  "${mounts[@]}" "${build_args[@]}" -t "$IMAGE" . >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; die "podman build"; }
# The image a previous run kept, now untagged: 6 GB of its own (the builder's cached layers stay).
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect -f '{{.Size}}' "$IMAGE")
log "image $IMAGE: $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }')"
image_user=$(podman image inspect -f '{{.Config.User}}' "$IMAGE")
[ "$image_user" = 10001:10001 ] || die "the image's USER is '$image_user', not 10001:10001"
# Output is read into a file before grep -q: with pipefail, grep -q leaving early makes the writer's SIGPIPE
# fail the pipeline, which would read as "no match".
podman image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" >"$work/image-env"
grep -q '^PIP_' "$work/image-env" \
  && die "a PIP_* build argument reached the final image's environment"
start_period=$(podman image inspect -f '{{json .HealthCheck}}' "$IMAGE" | "$PY" -c 'import json, sys
print(json.load(sys.stdin)["StartPeriod"] // 10**9)') \
  || die "the image has no HEALTHCHECK (built without --format docker?)"

PORT=${CHECK_PORT:-$(free_port)}
photo=$(make_photo)
podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
podman volume create "$VOLUME" >/dev/null

phase "first start, cache volume empty: ready"
start_container "$PREFIX-cold" -v "$VOLUME:/var/cache/scorecam"
uid=$(podman exec "$PREFIX-cold" id -u)
[ "$uid" = 10001 ] || die "the server runs as UID $uid, not 10001"
took=$(wait_ready "$PREFIX-cold" "$start_period")  # an assignment, so that a failure ends the script
log "ready after $took s (start period $start_period s), UID $uid"
podman logs "$PREFIX-cold" >"$work/cold.log" 2>&1
grep -q 'masked batch sizes measured fastest' "$work/cold.log" || die "no batch-size tuning on a cold start"

phase "predict, explain and HEALTHCHECK ($photo photo)"
check_predict
check_explain
podman healthcheck run "$PREFIX-cold" >/dev/null || die "podman healthcheck run: unhealthy"
[ "$(podman inspect -f '{{.State.Health.Status}}' "$PREFIX-cold")" = healthy ] || die "health status is not healthy"

phase "SIGTERM during an explanation (podman stop -t 40)"
curl -sN --max-time 120 -o "$work/drain.sse" -w '%{http_code}' -H 'Accept: text/event-stream' \
  -F "image=@$work/photo.jpg" -F top_k=2 "http://127.0.0.1:$PORT/v1/explain" >"$work/drain.code" &
drain_pid=$!
for _ in $(seq 600); do grep -q '^event: progress' "$work/drain.sse" 2>/dev/null && break; sleep 0.1; done
grep -q '^event: progress' "$work/drain.sse" || die "the explanation made no progress within 60 s"
stop_and_expect_exit_0 "$PREFIX-cold"
wait "$drain_pid" || die "the in-flight explanation's connection failed during the drain"
[ "$(cat "$work/drain.code")" = 200 ] && grep -q '^event: result' "$work/drain.sse" \
  || die "the in-flight explanation did not finish: $(tail -c 300 "$work/drain.sse")"
log "the explanation in flight finished (200, event: result); exit code 0"

phase "second start on the same volume: tuned batch size reused"
start_container "$PREFIX-warm" -v "$VOLUME:/var/cache/scorecam"
took=$(wait_ready "$PREFIX-warm" "$start_period")
log "ready after $took s"
podman logs "$PREFIX-warm" >"$work/warm.log" 2>&1
grep -q 'tuned by an earlier start under the same conditions' "$work/warm.log" \
  || { tail -n 30 "$work/warm.log" >&2; die "the second start tuned again"; }
grep -q 'masked batch sizes measured fastest' "$work/warm.log" && die "the second start tuned again"
check_predict
stop_and_expect_exit_0 "$PREFIX-warm"

phase "read-only root (--read-only --tmpfs /tmp, no volume)"
start_container "$PREFIX-readonly" --read-only --tmpfs /tmp
took=$(wait_ready "$PREFIX-readonly" "$start_period")
log "ready after $took s"
check_predict
podman logs "$PREFIX-readonly" >"$work/readonly.log" 2>&1
grep -qi 'openvino_telemetry\|telemetry' "$work/readonly.log" && { grep -i telemetry "$work/readonly.log" >&2; die "OpenVINO telemetry warnings"; }
log "warnings: $(grep -c WARNING "$work/readonly.log" || true)"
grep WARNING "$work/readonly.log" >&2 || true
stop_and_expect_exit_0 "$PREFIX-readonly"
end_phase
log "image $IMAGE: $(awk -v b="$size" 'BEGIN { printf "%.2f GB", b / 1e9 }')"
