"""One of conftest's background builds in a process of its own (conftest starts it):
``python prebuild.py NAME WORLD_ROOT RUN_DIR`` (``conftest.make``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402  (its own HF cache and offline settings, set at import)

if __name__ == "__main__":
    conftest.make(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
