#!/usr/bin/env bash
# The offline demo: tiny world -> teacher by lerobot-train -> reflow student -> table -> verify ->
# closed loop (student@1, teacher@10, teacher@1 drive the tiny world) -> a local Hub and back.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
exec hub-reflow demo --workdir "${DEMO_DIR:-outputs/demo}" "$@"
