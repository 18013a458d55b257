"""What a resumed training run changed in the settings its checkpoint was trained with.

Both trainers record their whole config in each checkpoint and refuse, on `--resume`, a config that differs in
anything but what a resumed run may change (how long it trains, where it runs and writes, how often it logs and
saves): the rest decides the trajectory, and the checkpoint was made with it.
"""

from __future__ import annotations

import json
import re
from typing import Collection

_UNSET = object()


def setting_changes(saved: dict, current: dict, resumable: Collection[str], only_shared: bool = False) -> list[str]:
    """'key: saved -> current' for each setting (a config as JSON) that differs, except the `resumable` ones (dotted
    keys; `[*]` stands for any index of a list of sections). With `only_shared`, settings one side lacks are left out."""
    old, new = _flatten(saved), _flatten(current)
    keys = [key for key in dict.fromkeys([*new, *old]) if not only_shared or (key in old and key in new)]
    return [f"{key}: {_shown(old, key)} -> {_shown(new, key)}" for key in keys
            if old.get(key, _UNSET) != new.get(key, _UNSET) and not _may_change(key, old, new, resumable)]


def _may_change(key: str, old: dict, new: dict, resumable: Collection[str]) -> bool:
    """A resumable setting, set on both sides (a source added or dropped is a change of data)."""
    return key in old and key in new and re.sub(r"\[\d+\]", "[*]", key) in resumable


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    """Leaf settings by dotted key; lists of sections are indexed (`data.sources[0].root`)."""
    if isinstance(value, dict):
        items = [(f"{prefix}.{key}" if prefix else str(key), item) for key, item in value.items()]
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        items = [(f"{prefix}[{index}]", item) for index, item in enumerate(value)]
    else:
        return {prefix: value}
    return {key: leaf for name, item in items for key, leaf in _flatten(item, name).items()}


def _shown(settings: dict, key: str) -> str:
    return json.dumps(settings[key]) if key in settings else "(unset)"
