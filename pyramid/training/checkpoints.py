"""The checkpoint convention both trainers follow (`pyramid train` and `pyramid train-vae`).

    <output>/checkpoints/step_0000500/     one directory per saved step, written atomically (pyramid/atomic.py)
      training_state.json                  step, LR scheduler, optimizer hyper-parameters, what else the trainer keeps
      rng.safetensors                      generator states, as uint8 tensors by name
      ...                                  the trainer's weights and optimizer state (safetensors + JSON)

A directory counts as a checkpoint once its state file exists, so a half-written one is never resumed from.
`--resume` means the same in both commands: continue from the latest checkpoint (start when there is none);
without it, an output that already holds checkpoints is refused rather than mixed with a new run.
Checkpoints written before the convention was shared stay loadable: train-vae's with `trainer_state.json`
(RNG states inside it) and `pyramid train`'s `step_000500/` (found by step number, whatever its width).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

STATE_FILE = "training_state.json"
RNG_FILE = "rng.safetensors"
OLD_STATE_FILES = ("trainer_state.json",)  # train-vae's name before the convention was shared
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_directory(checkpoints: Path, step: int) -> Path:
    return Path(checkpoints) / f"step_{step:07d}"


def state_file(directory: Path) -> Path:
    """The checkpoint's state file (its older name in a checkpoint that has one)."""
    for name in (STATE_FILE, *OLD_STATE_FILES):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return Path(directory) / STATE_FILE


def read_state(directory: Path) -> dict:
    """The checkpoint's training state as a JSON object; a missing or damaged state file is an error naming it."""
    from pyramid.errors import EpisodeError, one_line

    path = state_file(directory)
    if not path.is_file():
        raise EpisodeError(directory, f"not a checkpoint directory (no {STATE_FILE})")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise EpisodeError(path, f"unreadable training state ({exc.__class__.__name__}: {one_line(exc)})") from exc
    if not isinstance(state, dict):
        raise EpisodeError(path, "unreadable training state (not a JSON object)")
    return state


def step_directories(checkpoints: Path) -> list[tuple[int, Path, bool]]:
    """Every `step_*` directory under `checkpoints` as (step, path, complete), oldest first; complete: it has its
    state file (checkpoints are renamed into place whole, so one without it was damaged or copied in part)."""
    found = [(int(match.group(1)), path, state_file(path).is_file()) for path in Path(checkpoints).glob("step_*")
             if (match := STEP_DIR.match(path.name)) and path.is_dir()]
    return sorted(found)


def checkpoints_by_step(checkpoints: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `checkpoints`, by step, oldest first."""
    return [(step, path) for step, path, complete in step_directories(checkpoints) if complete]


def latest_checkpoint(checkpoints: Path) -> Path | None:
    steps = checkpoints_by_step(checkpoints)
    return steps[-1][1] if steps else None


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    import shutil

    for _, path in checkpoints_by_step(checkpoints)[:-keep]:
        shutil.rmtree(path)


def checkpoint_to_resume(checkpoints: Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from (None: start afresh); an output with checkpoints needs `resume`, and one
    whose newest checkpoint lost its state file is refused, where it would be passed over for an older one
    (resuming before it would silently train its steps again, from the start where it is the only one)."""
    from pyramid.errors import EpisodeError

    steps = step_directories(checkpoints)
    complete = [path for _, path, is_complete in steps if is_complete]
    latest = complete[-1] if complete else None
    if latest is not None and not resume:
        raise FileExistsError(f"{Path(checkpoints).parent} already holds checkpoints: pass --resume to continue, "
                              "or choose another output directory")
    if steps and not steps[-1][2]:
        since = f"from {latest}" if latest is not None else "from the start"
        raise EpisodeError(steps[-1][1], f"no {STATE_FILE}: a checkpoint damaged or copied in part; restore it, or "
                                         f"delete it to continue {since}")
    return latest


def save_rng(directory: Path, states: dict) -> None:
    """Generator states (uint8 tensors, as `torch.Generator.get_state()` returns them) by name."""
    from safetensors.torch import save_file

    save_file({name: state.contiguous() for name, state in states.items()}, str(Path(directory) / RNG_FILE))


def load_rng(directory: Path) -> dict:
    return read_tensors(Path(directory) / RNG_FILE)


def read_tensors(path: Path) -> dict:
    """A checkpoint's safetensors file; a missing, truncated or garbage one is an error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pyramid.errors import EpisodeError

    if not Path(path).is_file():
        raise EpisodeError(path, "missing from this checkpoint")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise EpisodeError(path, f"unreadable safetensors file, the checkpoint is damaged ({exc})") from exc


def require_fields(state: dict, path: Path, fields: dict[str, type], command: str) -> None:
    """The training state read from `path` holds each field with its type; else an error naming the file and the
    `command` whose checkpoint it is not."""
    from pyramid.errors import EpisodeError

    wrong = [name for name, kind in fields.items() if not isinstance(state.get(name), kind)]
    if wrong:
        raise EpisodeError(path, f"missing or malformed {', '.join(wrong)}: not a `{command}` checkpoint or a damaged one")
