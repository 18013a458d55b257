"""Which features of a LeRobot dataset become an episode's state and its actions.

Most datasets keep one vector each, `observation.state` and `action`. any4lerobot's converters (FORMATS.md section 2,
"LeRobot conversions"; its RoboMIND converter alike) keep every part as a feature of its own,
`observation.states.<part>` and `actions.<part>`, some of them 2-D (`end.orientation` [2, 4]: two arms' quaternions).
For such a dataset whose `robot_type` this toolkit reads raw, the parts are the ones its raw reader takes, in its
order, so an episode has the same vectors whichever release it came from. Any other split dataset gives every part,
in the order meta/info.json declares them. The reader's options `state_features` and `action_features` name the
features outright.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyramid.errors import SourceError
from pyramid.sources.robomind import SCHEMAS as ROBOMIND_SCHEMAS

VECTORS = ("state", "action")
SINGLE = {"state": "observation.state", "action": "action"}
SPLIT_PREFIX = {"state": "observation.states.", "action": "actions."}
NUMERIC_DTYPES = ("float", "int", "uint", "bool")
# The columns LeRobot adds to every dataset (frame and episode indices, timestamps): never state or action.
DEFAULT_FEATURES = {"timestamp", "frame_index", "episode_index", "index", "task_index"}

# AgiBot World's official converter flattens joint, effector, head and waist (and, in the action, the base's velocity).
_A2D_STATE = ("joint.position", "effector.position", "head.position", "waist.position")
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "a2d": {"state": _A2D_STATE, "action": (*_A2D_STATE, "robot.velocity")},
    **{robot: {vector: tuple(key for key, _ in schema.columns) for vector in VECTORS}
       for robot, schema in ROBOMIND_SCHEMAS.items() if not schema.simulated},
}


def vector_features(features: dict[str, Any], robot_type: Any, chosen: dict[str, list[str] | None],
                    info_path: Path) -> dict[str, tuple[str, ...]]:
    """"state" and "action" -> the features concatenated into each: the ones `chosen` (checked against the
    dataset's features, a SourceError naming meta/info.json), or else the dataset's own convention."""
    found = {}
    for vector in VECTORS:
        keys = chosen.get(vector)
        if keys is None:
            found[vector] = default_features(features, robot_type, vector)
        else:
            found[vector] = tuple(_checked(features, keys, vector, info_path))
    return found


def default_features(features: dict[str, Any], robot_type: Any, vector: str) -> tuple[str, ...]:
    if SINGLE[vector] in features:
        return (SINGLE[vector],)
    prefix = SPLIT_PREFIX[vector]
    preset = PRESETS.get(robot_type, {}).get(vector) if isinstance(robot_type, str) else None
    if preset and all(prefix + part in features for part in preset):
        return tuple(prefix + part for part in preset)
    return tuple(key for key, feature in features.items() if key.startswith(prefix) and is_numeric(feature))


def is_numeric(feature: Any) -> bool:
    return isinstance(feature, dict) and str(feature.get("dtype", "")).startswith(NUMERIC_DTYPES)


def part_name(key: str) -> str:
    """How a part's dimensions are prefixed where a vector joins several features: `joint.position` of
    `observation.states.joint.position`."""
    for prefix in SPLIT_PREFIX.values():
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _checked(features: dict[str, Any], keys: list[str], vector: str, info_path: Path) -> list[str]:
    option = f"{vector}_features"
    numeric = [key for key, feature in features.items() if is_numeric(feature) and key not in DEFAULT_FEATURES]
    for key in keys:
        if key not in features:
            raise SourceError(f"{info_path}: option {option} names '{key}', which the dataset does not declare "
                              f"(its numeric features: {', '.join(numeric) or 'none'})")
        if not is_numeric(features[key]):
            raise SourceError(f"{info_path}: option {option} names '{key}', a {features[key].get('dtype')} feature, "
                              f"not numbers")
    if len(set(keys)) != len(keys):
        raise SourceError(f"{info_path}: option {option} names a feature twice: {keys}")
    return keys
