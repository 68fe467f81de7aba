#!/usr/bin/env bash
# The offline demo: tiny world -> teacher by lerobot-train -> reflow student -> table.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec hub-reflow demo --workdir "${DEMO_DIR:-outputs/demo}" "$@"
