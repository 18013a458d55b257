"""A reader's options (a recipe's `sources[].options`) checked against its constructor, before any reader is built.

An option is a keyword of the `__init__` of the reader or a class it inherits from (they pass the rest
on); its value must fit the keyword's annotation. Checked on the driver, so a typo fails at load time
rather than in every Ray worker, or silently (the base class keeps unknown keywords).
"""

from __future__ import annotations

import inspect
import typing

from pydantic import TypeAdapter, ValidationError

# Set by the recipe's own keys, never through options.
RECIPE_KEYS = ("root", "level", "embodiment")


def option_problems(reader: type, options: dict) -> list[str]:
    """One line per option the reader does not take or whose value does not fit."""
    accepted = reader_options(reader)
    problems = []
    for name, value in options.items():
        if name not in accepted:
            problems.append(f"{reader.name} takes no option '{name}' (it takes: {', '.join(accepted) or 'none'})")
        elif (problem := _value_problem(accepted[name], value)) is not None:
            problems.append(f"option '{name}': {problem}")
    return problems


def reader_options(reader: type) -> dict[str, object]:
    """Keyword name -> annotation (typing.Any when unannotated), over the reader's class hierarchy."""
    accepted: dict[str, object] = {}
    for cls in reversed(reader.__mro__):
        init = cls.__dict__.get("__init__")
        if init is None or not inspect.isfunction(init):
            continue
        hints = typing.get_type_hints(init)
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) \
                    and parameter.name not in ("self", *RECIPE_KEYS):
                accepted[parameter.name] = hints.get(parameter.name, typing.Any)
    return dict(sorted(accepted.items()))


def _value_problem(annotation: object, value: object) -> str | None:
    try:
        TypeAdapter(annotation).validate_python(value)
    except ValidationError as exc:
        return "; ".join(error["msg"] for error in exc.errors())
    return None
