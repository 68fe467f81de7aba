"""One of conftest's long builds in a process of its own (conftest starts it in the background):
``python prebuild.py NAME FOLDER`` (``conftest.make``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402  (its own HF cache and offline settings, set at import)

if __name__ == "__main__":
    conftest.make(sys.argv[1], Path(sys.argv[2]))
