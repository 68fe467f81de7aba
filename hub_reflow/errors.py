"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero.

Exit codes (docs/cli.md#errors-exit-codes-and-output): 0 ok, 1 a check failed, 2 bad input, 130 interrupted."""

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """Bad input: the message names what is wrong and what to do. No traceback is shown."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(UserError):
    """A check on a result failed (a training run whose loss became NaN/Inf): exit 1, one line."""

    exit_code = EXIT_CHECK_FAILED
