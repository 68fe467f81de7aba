"""Quiet, conventional command output: the user sees hub-reflow's own lines and progress bar;
other libraries' progress bars, warnings and prints are silenced unless ``-v``.

Set up once by the CLI, before the libraries are imported where possible (their progress-bar and
verbosity switches are read from the environment at import time)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings

# Lines LeRobot prints (print(), not logging) while loading a SmolVLA policy.
LIBRARY_PRINTS = (
    re.compile(r"^Loading +\S+ weights \.\.\.\s*$"),  # smolvlm_with_expert: the VLM backbone
    re.compile(r"^Reducing the number of VLM layers to \d+ \.\.\.\s*$"),
    re.compile(r"^Loading weights from local directory\s*$"),  # PreTrainedPolicy.from_pretrained
)
# Library loggers kept at ERROR (WARNING with -v). Ours ("hub_reflow") log at INFO.
LIBRARY_LOGGERS = ("httpx", "httpcore", "huggingface_hub", "datasets", "accelerate", "matplotlib", "transformers",
                   "torch", "lerobot", "PIL", "urllib3", "filelock", "fsspec", "draccus")
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, and transformers' (it follows this switch)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # "`torch_dtype` is deprecated", tokenizer warnings
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


class _DropLibraryPrints(io.TextIOBase):
    """A text stream that forwards everything except whole lines matching ``LIBRARY_PRINTS``.

    ``print(x)`` writes ``x`` then ``"\\n"``: a dropped line takes its newline with it."""

    def __init__(self, stream):
        self._stream = stream
        self._drop_newline = False

    def write(self, text: str) -> int:
        if self._drop_newline and text == "\n":
            self._drop_newline = False
            return len(text)
        self._drop_newline = False
        kept = []
        for line in text.splitlines(keepends=True):
            if any(p.match(line.rstrip("\n")) for p in LIBRARY_PRINTS):
                self._drop_newline = not line.endswith("\n")
                continue
            kept.append(line)
        if kept:
            self._stream.write("".join(kept))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def quiet_environment() -> None:
    """Switch other libraries' bars and chatter off in this process and its children (values the
    user set are kept). Call before importing them."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def configured(verbose: bool = False):
    """Logging for one command: our INFO lines; libraries at WARNING with ``-v``, else ERROR, their
    Python warnings and known prints dropped, their progress bars off. The streams and warning
    filters are restored on exit (the CLI can be called in-process)."""
    # LeRobot warns at import, with a long traceback, when FFmpeg is missing: we read no videos.
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    library_level = logging.WARNING if verbose else logging.ERROR
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    logging.getLogger("hub_reflow").setLevel(logging.INFO)
    if verbose:
        yield
        return
    quiet_environment()
    _already_imported()
    saved = sys.stdout, sys.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.stdout, sys.stderr = _DropLibraryPrints(sys.stdout), _DropLibraryPrints(sys.stderr)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def _already_imported() -> None:
    """The same switches for libraries imported before ``configure`` ran (their env vars are read
    at import)."""
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
