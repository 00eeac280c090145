"""Errors a user can cause and fix: printed as one line naming the file or option, exit code 2."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input from the user (missing path, malformed split file, bad option, unreadable checkpoint)."""


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in its traceback."""
    text = str(exc).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original message
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(exc).__name__


def resolver_user_error(exc: BaseException) -> UserError | None:
    """The UserError a config resolver raised (conf/dataset/custom.yaml's classes.txt): OmegaConf re-raises it
    as an InterpolationResolutionError, once per interpolation level, and keeps it only as the context."""
    from omegaconf.errors import InterpolationResolutionError

    while isinstance(exc, InterpolationResolutionError):
        exc = exc.__context__
    return exc if isinstance(exc, UserError) else None


def exit_on_user_error(fn):
    """Decorator for entry points: a UserError becomes `error: <one line>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            sys.exit(2)
        except Exception as exc:  # a UserError raised in a DataLoader worker or a config resolver, re-wrapped
            if "UserError" in str(exc) and "Original Traceback" in str(exc):
                print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
                sys.exit(2)
            cause = resolver_user_error(exc)
            if cause is not None:
                print(f"error: {one_line(cause)}", file=sys.stderr, flush=True)
                sys.exit(2)
            raise

    return wrapper
