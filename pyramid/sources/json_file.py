"""A dataset's JSON metadata, read with one rule for what is wrong with it.

`json.loads` refuses more than bad grammar: an integer of more than 4300 digits is a ValueError and lists nested
thousands deep a RecursionError. Uncaught, either ended discovery or became an "unexpected error" in place of a line
naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyramid.errors import EpisodeError, one_line

# What json.loads raises on text it refuses: JSONDecodeError (a ValueError), ValueError, RecursionError.
JSON_FAILURES = (ValueError, RecursionError)


def read_json(path: Path) -> Any:
    """The JSON document at `path`, past a byte-order mark (a Windows editor's); else an EpisodeError naming the line
    of the error, or why else the file cannot be read (not UTF-8, nested too deep)."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise EpisodeError(path, f"line {error.lineno}: invalid JSON ({error.msg})") from None
    except (OSError, *JSON_FAILURES) as error:
        raise EpisodeError(path, f"unreadable JSON ({json_problem(error)})") from None


def json_line(line: str, number: int) -> tuple[Any, str | None]:
    """Line `number` of a JSON-lines file, parsed, and None; or None and why it is no JSON, in one line."""
    try:
        return json.loads(line), None
    except JSON_FAILURES as error:
        return None, f"line {number} is not JSON ({json_problem(error)})"


def json_problem(error: BaseException) -> str:
    """Why json.loads refused a text, in one line: the decoder's own words and where, or the other error's."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at column {error.colno}"
    return f"{error.__class__.__name__}: {one_line(error)}"
