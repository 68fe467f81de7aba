#!/usr/bin/env bash
# The test suite (offline; builds its own tiny world and teachers with the real lerobot-train).
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec python -m pytest -q -p no:cacheprovider "$@"
