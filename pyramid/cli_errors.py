"""How the CLI reports an error: one line on stderr and an exit code, the traceback only when debugging.

Exit codes: 2 for a user error (a bad recipe or config, a missing or corrupt file, an unusable output),
1 for a failed build or an unexpected error, 130 for Ctrl-C. `--debug` or PYRAMID_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import sys

import typer

from pyramid.errors import BuildError, EpisodeError, ExportError, SourceError, debugging, one_line


def fail(message: str) -> None:
    """End a command on a user error; while debugging, the error being handled is raised with its traceback."""
    if debugging() and sys.exc_info()[1] is not None:
        raise
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def describe_error(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for an error that reached the top of the CLI."""
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    text = one_line(exc)
    if isinstance(exc, _user_errors()):
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
            text = f"{exc.filename}: {text}"
        return 2, text
    return 1, f"unexpected {exc.__class__.__name__}: {text} (rerun with --debug for the traceback)"


def _user_errors() -> tuple[type[BaseException], ...]:
    from pyramid.yaml_config import ConfigError

    errors: list[type[BaseException]] = [EpisodeError, SourceError, BuildError, ExportError, ConfigError, OSError]
    for module, name in (("flow.ptlflow_backend", "CheckpointError"),):
        if (found := getattr(sys.modules.get(module), name, None)) is not None:
            errors.append(found)
    return tuple(errors)
