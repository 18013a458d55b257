"""Pydantic validation errors as one `key: problem` line each, shared by every YAML config we load."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(exc: ValidationError) -> list[str]:
    return [_describe(error) for error in exc.errors()]


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}"
