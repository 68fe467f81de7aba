#!/usr/bin/env bash
# The test suite (what CI runs), in two tiers:
#   unit         tests/unit/  synthetic safetensors and JSON, no training (under a minute)
#   integration  tests/       a tiny offline world, teachers trained by the real lerobot-train (2 processes)
# With arguments, they go to pytest as they are (a file, -k EXPR, ...).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
if [ "$#" -gt 0 ]; then
  exec python -m pytest -q -p no:cacheprovider "$@"
fi
echo "== unit tier (tests/unit)"
python -m pytest -q -p no:cacheprovider tests/unit
echo "== integration tier (tests)"
# Two test processes (pytest-xdist), one thread each: most tests keep one core busy, and the long
# builds are shared between the processes (tests/conftest.py).
OMP_NUM_THREADS=1 exec python -m pytest -q -p no:cacheprovider --durations=15 -n 2 tests --ignore=tests/unit
