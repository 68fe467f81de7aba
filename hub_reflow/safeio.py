"""One reader for safetensors files and one writer for JSON, used wherever hub-reflow reads weights
or writes JSON.

- Any failure to read a safetensors file (zero bytes, truncated, not safetensors, unreadable)
  becomes one ``UserError`` line naming the file, instead of a ``SafetensorError`` traceback.
- JSON is written strictly: NaN and +-Inf (which ``json.dumps`` writes as bare ``NaN`` /
  ``Infinity`` tokens that strict readers such as JavaScript's ``JSON.parse`` or ``jq`` reject)
  become ``null``.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


def unreadable(path: Path | str, what: str, error: BaseException) -> UserError:
    reason = (str(error).splitlines() or [type(error).__name__])[0][:200] or type(error).__name__
    return UserError(f"{what}: {path} cannot be read as a safetensors file ({reason}); it is truncated or "
                     "corrupt: copy or download it again")


def safe_open(path: Path | str, what: str, framework: str = "pt", device: str = "cpu"):
    """``safetensors.safe_open`` (a handle, usable in ``with``) whose errors are one-line ``UserError``s."""
    from safetensors import safe_open as _open

    try:
        return _open(str(path), framework=framework, device=device)
    except Exception as e:  # SafetensorError, OSError (missing, unreadable), ...
        raise unreadable(path, what, e) from None


@contextmanager
def open_safetensors(path: Path | str, what: str, framework: str = "pt", device: str = "cpu"):
    """``safetensors.safe_open`` whose open errors are one-line ``UserError``s naming the file.
    Errors raised by the caller's own code inside the ``with`` block pass through unchanged."""
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework=framework, device=device)
    except Exception as e:  # SafetensorError, OSError (missing, unreadable), ...
        raise unreadable(path, what, e) from None
    with handle as f:
        yield f


def check_safetensors(path: Path | str, what: str) -> None:
    """Open the file's header (safetensors checks that it covers the whole file: a truncated file
    fails here) without reading any tensor."""
    with open_safetensors(path, what) as f:
        f.keys()


def read_header(path: Path | str, what: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype name), without loading any tensor."""
    with open_safetensors(path, what) as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def load_file(path: Path | str, what: str, device: str = "cpu") -> dict:
    from safetensors.torch import load_file as _load

    check_safetensors(path, what)
    try:
        return _load(str(path), device=device)
    except Exception as e:  # a file changed between the check and the load
        raise unreadable(path, what, e) from None


def load_model(model, path: Path | str, what: str, strict: bool = True, device: str = "cpu"):
    """``safetensors.torch.load_model`` with the file checked first; a key or shape mismatch is a
    one-line error too."""
    from safetensors.torch import load_model as _load

    check_safetensors(path, what)
    try:
        return _load(model, str(path), strict=strict, device=device)
    except RuntimeError as e:  # missing / unexpected keys, shapes
        raise UserError(f"{what}: {path} does not match the model ({str(e).splitlines()[0][:200]})") from None
    except Exception as e:
        raise unreadable(path, what, e) from None


def check_folder(folder: Path | str, what: str) -> None:
    """Every ``*.safetensors`` file directly in ``folder`` must be readable."""
    for p in sorted(Path(folder).glob("*.safetensors")):
        if p.is_file():
            check_safetensors(p, what)


# ---- strict JSON ---------------------------------------------------------------------------------


def strict(obj):
    """``obj`` with every non-finite float replaced by None (recursively through dicts, lists and
    tuples); numpy and torch scalars become plain numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalar
        return strict(obj.item())
    return obj


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` that never writes NaN / Infinity (they become null)."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path: Path | str, obj, **kwargs) -> None:
    Path(path).write_text(dumps(obj, **kwargs))
