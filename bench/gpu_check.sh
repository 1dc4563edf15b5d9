#!/usr/bin/env bash
# The GPU check of issues 22 and 27 in one command (bench/gpu_check.py says what it runs):
#
#   bash bench/gpu_check.sh [--samples DIR] [--quick] [--dry-run-cpu]
#
# Finds a Python with torch (PYTHON, else .venv/bin/python, else python3), installs what the service
# lacks from carried wheels (bench/out/wheels, made here by bench/gpu_wheels.sh; a lent GPU machine
# reaches no PyPI) into a scratch folder, never into that Python, and runs the check under an 8-minute
# limit. The tables go to stdout and to $OUT/gpu_check.txt (bench/out/ when OUT is unset), the steps'
# stderr to gpu_check.log beside it.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: $PY has no torch; set PYTHON to one that has" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's app/, whether or not the package is installed

SITE="${TMPDIR:-/tmp}/gpu-check-site"
missing="$("$PY" bench/gpu_check.py --missing)"
if [ -n "$missing" ]; then
  echo "gpu_check: $PY lacks: $missing"
  if ls bench/out/wheels/*.whl >/dev/null 2>&1; then
    echo "gpu_check: installing the carried wheels of bench/out/wheels into $SITE (no index)"
    wheels=()
    for w in bench/out/wheels/*.whl; do  # only the distributions that are missing: keep the machine's own versions
      dist="$(basename "$w" | cut -d- -f1 | tr '_' '-' | tr 'A-Z' 'a-z')"
      case " $(echo "$missing" | tr '_' '-' | tr 'A-Z' 'a-z') " in *" $dist "*) wheels+=("$w") ;; esac
    done
    if [ ${#wheels[@]} -gt 0 ] && "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}"; then
      export PYTHONPATH="$PYTHONPATH:$SITE"
    else
      echo "gpu_check: installing the carried wheels failed; the steps that need them will say so"
    fi
  elif timeout 5 "$PY" -c "import socket; socket.create_connection(('pypi.org', 443), 3)" 2>/dev/null; then
    echo "gpu_check: installing from PyPI into $SITE"
    # shellcheck disable=SC2086  # one argument per package name
    "$PY" -m pip install -q --no-compile --target "$SITE" $missing && export PYTHONPATH="$PYTHONPATH:$SITE"
  else
    echo "gpu_check: PyPI is unreachable here and no wheels were carried (bench/gpu_wheels.sh makes them):"
    echo "gpu_check: the steps that need the missing packages are skipped, and the summary says so"
  fi
fi

RESULTS="${OUT:-bench/out}"
mkdir -p "$RESULTS"
timeout --kill-after=10 480 "$PY" bench/gpu_check.py "$@" --results "$RESULTS/gpu_check.txt" --log "$RESULTS/gpu_check.log"
rc=$?
[ $rc -eq 124 ] && echo "gpu_check: stopped at the 8-minute limit; the lines above are what it measured"
exit $rc
