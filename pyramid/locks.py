"""One writer per output: an advisory lock on a file inside the output, held while a command writes there.

The lock file is opened without following a link and without truncating: a lock file that is a link (to a file
outside the output, say) is refused, where opening it for writing emptied the file it pointed at.
"""

from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyramid.atomic import OutputBusy
from pyramid.paths import under_a_file


@contextmanager
def exclusive(directory: Path, lock_name: str, busy: str) -> Iterator[None]:
    """Hold `directory/lock_name` (made with `directory` where absent, and removed with it where the block fails before
    writing anything there); OutputBusy "`directory`: `busy`" where another process holds it."""
    directory = Path(directory)
    if problem := under_a_file(directory):
        raise NotADirectoryError(problem)
    if directory.is_symlink() and not directory.exists():  # mkdir would say only "File exists"
        raise NotADirectoryError(f"{directory}: a link to {os.readlink(directory)}, which does not exist")
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / lock_name
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileExistsError(f"{path}: is a link, where this lock file should be; delete it") from None
        raise
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusy(f"{directory}: {busy}") from None
        yield
    except BaseException:
        if made and [entry.name for entry in directory.iterdir()] == [lock_name]:  # a failed run leaves no output
            path.unlink()
            directory.rmdir()
        raise
    finally:
        os.close(descriptor)
