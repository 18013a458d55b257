"""The one error type a bad input raises: it names the file and says what is wrong with it."""

from __future__ import annotations

import errno
import os

DEBUG_ENV = "PYRAMID_DEBUG"  # set by `pyramid --debug`: tracebacks are shown, not one-line errors


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(error: BaseException, limit: int | None = None) -> str:
    """An error's message on one line (a library's may span many), cut at `limit` characters; the error's type when it
    says nothing."""
    text = " ".join(str(error).split()) or error.__class__.__name__
    return text[:limit] if limit else text


class EpisodeError(Exception):
    """An input file is missing, corrupt or not what its format promises."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable, so that one raised in a Ray worker reaches the driver as itself
        return self.__class__, (self.path, self.problem)


class SourceError(Exception):
    """A dataset root cannot be used at all (missing, unreadable, or of no known kind)."""


class BuildError(Exception):
    """A build cannot start or finish; the message says what to do."""


class ExportError(Exception):
    """A build cannot be exported as asked; the message says what to pass or do."""


# Errors that say the output takes no more writes, whatever is being written: no episode is at fault.
OUTPUT_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class OutputFullError(Exception):
    """A build's output stopped taking writes (a full disk or quota, a file system turned read-only). The build stops
    and no episode is quarantined for it: a rerun, once there is room, does what was not written."""


def output_full(exc: BaseException | str | None) -> str | None:
    """Why the disk takes no more writes, where `exc` or an error it was raised from says so; else None."""
    while isinstance(exc, BaseException):
        if isinstance(exc, OSError) and exc.errno in OUTPUT_FULL_ERRNOS:
            return exc.strerror or str(exc)
        exc = exc.__cause__
    return None
