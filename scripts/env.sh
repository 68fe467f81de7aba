# Sourced by scripts/demo.sh and scripts/test.sh: create or reuse a Python 3.12 virtualenv and
# install hub-reflow (editable) with its test extra into it (pytest, and the hub-server extra: FastAPI and
# uvicorn for the local Hub the tests and the demo's push/pull stage use).
# The venv lives outside the checkout so every clone on this machine reuses it:
#   HUB_REFLOW_VENV (default ~/.cache/hub-reflow/venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HUB_REFLOW_VENV:-$HOME/.cache/hub-reflow/venv}"

find_python312() {
  if command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    echo python3.12; return
  fi
  for p in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  echo "hub-reflow: error: Python 3.12 not found (LeRobot 0.6 needs it); install python3.12" >&2
  exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
  "$(find_python312)" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# Quick when everything is already installed; a fresh machine downloads torch (a CUDA build from
# PyPI that runs on the CPU) and LeRobot.
"$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
# LeRobot's PushT sim for the `hub-reflow eval --env.type pusht` test: without its opencv-python
# requirement (the venv's headless OpenCV serves it; its other dependencies are in the test extra).
"$VENV/bin/python" -m pip install -q --no-deps "gym-pusht==0.1.8"
export PATH="$VENV/bin:$PATH"
