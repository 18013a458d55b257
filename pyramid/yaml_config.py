"""Loading a YAML config into a strict pydantic model, the one way every config of the project is loaded.

One rule for each join: unknown keys are errors and every problem is reported at once, each as
`key: problem` on one line; `${VAR}` anywhere in the file is replaced by the environment variable and
an unset one is an error naming it; relative paths are relative to the file and `~` is expanded.
Each kind of config has its own error class (a `ConfigError`), so a caller can tell which one failed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pyramid.errors import one_line

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and lists every bad key."""


class Strict(BaseModel):
    """The base of every config model: unknown keys are errors, loaded values are not changed in place."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no setting is infinite or NaN


def load_yaml(path: str | os.PathLike, model: type[Model], error: type[ConfigError], *,
              overrides: dict[str, Any] | None = None, prepare: Callable[[dict], dict] | None = None) -> Model:
    """The file at `path` validated into `model`; `prepare` may rewrite the raw mapping first (e.g. expand a preset)."""
    path = Path(path)
    raw = read_mapping(path, error)
    raw.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return validate(raw, model, error, str(path), prepare)


def read_mapping(path: Path, error: type[ConfigError]) -> dict:
    try:
        raw = yaml.safe_load(expand_environment(path.read_text(encoding="utf-8"), path, error))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: cannot read {_kind(error)} (not UTF-8 text: byte {exc.start})") from None
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read {_kind(error)} ({one_line(exc)})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: a {_kind(error)} must be a mapping of keys to values")
    return raw


def validate(raw: Any, model: type[Model], error: type[ConfigError], origin: str,
             prepare: Callable[[dict], dict] | None = None) -> Model:
    """`raw` as a `model`, or `error` with `origin: ` and every problem, separated by `; `."""
    try:
        return model.model_validate(prepare(raw) if prepare else raw)
    except ValidationError as exc:
        raise error(f"{origin}: " + "; ".join(validation_problems(exc))) from None
    except ValueError as exc:  # raised by `prepare`
        raise error(f"{origin}: {exc}") from None


def expand_environment(text: str, path: Path, error: type[ConfigError]) -> str:
    """Substitute ${VAR} everywhere; an unset variable is an error, never left as literal text."""
    missing = sorted({name for name in re.findall(r"\$\{(\w+)\}", text) if name not in os.environ})
    if missing:
        raise error(f"{path}: environment variable(s) not set: {', '.join(missing)}")
    return os.path.expandvars(text)


def resolve_path(value: str | os.PathLike | None, base: Path) -> str | None:
    """`value` with `~` expanded, relative to `base` (the config file's folder) unless absolute; None stays None."""
    if value is None:
        return None
    expanded = Path(os.path.expanduser(str(value)))
    return os.path.normpath(expanded if expanded.is_absolute() else base / expanded)


def validation_problems(exc: ValidationError) -> list[str]:
    return [_describe(error) for error in exc.errors()]


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}"


def _kind(error: type[ConfigError]) -> str:
    return getattr(error, "kind", "config")
