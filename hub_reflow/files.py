"""Small file utilities: an atomically replaced folder, a file's sha256, the package versions a
record names."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# The packages whose versions a lineage or pairs record names.
RECORDED_PACKAGES = ("hub-reflow", "lerobot", "torch", "transformers", "huggingface_hub", "accelerate", "safetensors")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename.

    A crash while writing leaves ``final`` (the previous checkpoint) untouched and only a
    ``.tmp-*`` folder behind, which the next save removes. ``final`` gets the mode ``mkdir`` would
    give it (0o777 less the umask), as every folder ``lerobot-train`` writes.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private; the final one is made as mkdir makes folders
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def package_versions() -> dict:
    out = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
