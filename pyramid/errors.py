"""The one error type a bad input raises: it names the file and says what is wrong with it."""

from __future__ import annotations

import os

DEBUG_ENV = "PYRAMID_DEBUG"  # set by `pyramid --debug`: tracebacks are shown, not one-line errors


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


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
