"""The one error type a bad input raises: it names the file and says what is wrong with it."""

from __future__ import annotations

import os


class EpisodeError(Exception):
    """An input file is missing, corrupt or not what its format promises."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SourceError(Exception):
    """A dataset root cannot be used at all (missing, unreadable, or of no known kind)."""


class BuildError(Exception):
    """A build cannot start or finish; the message says what to do."""
