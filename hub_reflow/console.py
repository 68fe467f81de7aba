"""How a command ends: a user's mistake (``UserError``) or Ctrl-C as one line on stderr with its
exit code (0 ok, 1 a check failed, 2 bad input, 130 interrupted), never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, UserError


def fail(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"hub-reflow: error: {msg}", file=sys.stderr)
    return code


def run_command(command: Callable[[], int], interrupted: Callable[[], str]) -> int:
    """``command``'s exit code; ``interrupted()`` says what a Ctrl-C left behind."""
    try:
        return command()
    except UserError as e:
        return fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return fail(interrupted(), EXIT_INTERRUPTED)
