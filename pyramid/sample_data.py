"""Small synthetic datasets to try the toolkit on: a LeRobot v3.0 robot dataset and a folder of captioned clips.

A textured two-jaw gripper moves over a textured table. Its state is (x, y, grip): the centre in
pixels (x to the right, y down) and the jaw opening in [0, 1]. The action of frame t is
state[t + 1] - state[t], so the motion seen in the video is exactly what the actions say; optical
flow and latent actions learned from these frames can be checked against them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from pyramid.atomic import atomic_directory
from pyramid.lerobot_writer import RecordedEpisode, write_lerobot_v3
from pyramid.video_io import write_video

# Motus trains at 384x320 (height x width): sample frames are born at that size, so a build stores them unresized.
HEIGHT, WIDTH, FPS = 384, 320, 10
NAMES = ["x", "y", "grip"]
ROBOT_TYPE = "sample_arm"
CAMERA = "observation.images.top"
MAX_SPEED = 6.0  # px per frame
MAX_GRIP_SPEED = 0.25  # opening per frame: each jaw moves up to about 5 px, a motion flow sees as well as the arm's
# Gripper geometry (px): a square hub with one jaw on each side; the jaw gap grows with the opening.
HUB_HALF = 14.0
JAW_WIDTH, JAW_HALF_HEIGHT = 8.0, 22.0
GAP_CLOSED, GAP_OPEN = 3.0, 24.0
MARGIN_X = HUB_HALF + GAP_OPEN + JAW_WIDTH + 4
MARGIN_Y = JAW_HALF_HEIGHT + 4
# The table varies only in green and blue and keeps red at TABLE_RED; the gripper is red (GRIPPER_RED)
# with its texture in green and blue, so a frame's red channel is a linear map of gripper coverage.
TABLE_RED, GRIPPER_RED = 50.0, 250.0


def write_sample_data(out_dir: str | os.PathLike, robot_episodes: int = 32, video_clips: int = 8, seed: int = 0,
                      num_frames: int = 40) -> dict[str, Path]:
    """Write `<out_dir>/lerobot` (LeRobot v3.0, AV1) and `<out_dir>/videos` (h264 clips with captions).

    Both are replaced if they exist. The same seed writes the same states, actions and frames.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir / "lerobot", ROBOT_TYPE)
    check_replaceable(out_dir / "videos")
    out_dir.mkdir(parents=True, exist_ok=True)
    robot_seed, clip_seed = np.random.SeedSequence(seed).spawn(2)
    lerobot = write_lerobot_v3(out_dir / "lerobot", _episodes(robot_seed, robot_episodes, num_frames), fps=FPS,
                               robot_type=ROBOT_TYPE, state_names=NAMES, action_names=NAMES, overwrite=True)
    videos = _write_clips(out_dir / "videos", clip_seed, video_clips, num_frames)
    return {"lerobot": lerobot, "videos": videos}


def check_replaceable(folder: Path, robot_type: str | None = None) -> None:
    """Sample data replaces only sample data: a LeRobot dataset of `robot_type`, or a folder of sample clips
    (`clip_NNN.mp4` and their captions), never a dataset a user keeps under the same name."""
    if not folder.exists():
        return
    if robot_type is not None:
        info = folder / "meta" / "info.json"
        try:
            ours = json.loads(info.read_text()).get("robot_type") == robot_type
        except (OSError, ValueError, AttributeError):
            ours = False
    else:
        ours = folder.is_dir() and all(re.fullmatch(r"clip_\d{3}\.(mp4|txt)", path.name) for path in folder.iterdir())
    if not ours:
        raise ValueError(f"{folder}: exists and is not sample data this command wrote; choose another directory")


def _episodes(seed: np.random.SeedSequence, count: int, num_frames: int) -> Iterator[RecordedEpisode]:
    for child in seed.spawn(count):
        rng = np.random.default_rng(child)
        states = simulate_states(rng, num_frames + 1)
        frames = render_episode(rng, states[:-1])
        yield RecordedEpisode(describe(states), states[:-1], np.diff(states, axis=0), {CAMERA: frames})


def _write_clips(folder: Path, seed: np.random.SeedSequence, count: int, num_frames: int) -> Path:
    with atomic_directory(folder) as tmp:
        for index, child in enumerate(seed.spawn(count)):
            rng = np.random.default_rng(child)
            states = simulate_states(rng, num_frames)
            write_video(tmp / f"clip_{index:03d}.mp4", render_episode(rng, states), fps=FPS, codec="libx264")
            (tmp / f"clip_{index:03d}.txt").write_text(describe(states) + "\n")
    return folder


def simulate_states(rng: np.random.Generator, count: int) -> np.ndarray:
    """float32 [count, 3] states (x, y, grip): smooth random velocities, bouncing off the frame's margins."""
    low = np.array([MARGIN_X, MARGIN_Y, 0.0])
    high = np.array([WIDTH - MARGIN_X, HEIGHT - MARGIN_Y, 1.0])
    limit = np.array([MAX_SPEED, MAX_SPEED, MAX_GRIP_SPEED])
    state = rng.uniform(low, high)
    velocity = rng.uniform(-limit, limit) / 2
    states = [state]
    for _ in range(count - 1):
        velocity = np.clip(0.85 * velocity + rng.normal(0, 0.25, 3) * limit, -limit, limit)
        outside = (state + velocity < low) | (state + velocity > high)
        velocity[outside] *= -1
        state = np.clip(state + velocity, low, high)
        states.append(state)
    return np.asarray(states, np.float32)


def render_episode(rng: np.random.Generator, states: np.ndarray) -> np.ndarray:
    """uint8 RGB [T, HEIGHT, WIDTH, 3]: the gripper at each state over one static random table."""
    table = _table(rng)
    return np.stack([_draw_gripper(table, *state) for state in states])


def _table(rng: np.random.Generator) -> np.ndarray:
    """Green/blue texture at two scales (16 px tiles, smooth 4 px blotches); no per-pixel noise, which codecs smear."""
    import cv2

    tiles = rng.uniform(70, 190, size=(HEIGHT // 16 + 1, WIDTH // 16 + 1, 2))
    tiles = np.kron(tiles, np.ones((16, 16, 1)))[:HEIGHT, :WIDTH]
    blotches = rng.uniform(-35, 35, size=(HEIGHT // 4, WIDTH // 4, 2)).astype(np.float32)
    blotches = cv2.resize(blotches, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    table = np.empty((HEIGHT, WIDTH, 3), np.float32)
    table[..., 0] = TABLE_RED
    table[..., 1:] = np.clip(tiles + blotches, 30, 230)
    return table


def gripper_boxes(x: float, y: float, grip: float) -> list[tuple[float, float, float, float]]:
    """The hub and the two jaws as (left, right, top, bottom) in pixel coordinates, symmetric about (x, y)."""
    gap = GAP_CLOSED + (GAP_OPEN - GAP_CLOSED) * float(grip)
    inner = HUB_HALF + gap
    return [
        (x - HUB_HALF, x + HUB_HALF, y - HUB_HALF, y + HUB_HALF),
        (x - inner - JAW_WIDTH, x - inner, y - JAW_HALF_HEIGHT, y + JAW_HALF_HEIGHT),
        (x + inner, x + inner + JAW_WIDTH, y - JAW_HALF_HEIGHT, y + JAW_HALF_HEIGHT),
    ]


def _draw_gripper(table: np.ndarray, x: float, y: float, grip: float) -> np.ndarray:
    # Exact area coverage per pixel (pixel j spans [j, j + 1]), so sub-pixel positions show in the image.
    boxes = gripper_boxes(x, y, grip)
    left, top = int(min(box[0] for box in boxes)), int(min(box[2] for box in boxes))
    right, bottom = int(max(box[1] for box in boxes)) + 1, int(max(box[3] for box in boxes)) + 1
    rows, cols = np.arange(top, bottom, dtype=np.float32), np.arange(left, right, dtype=np.float32)
    frame = table.copy()
    patch = frame[top:bottom, left:right]
    for box in boxes:  # the parts never overlap, so each one paints its own pixels
        coverage = np.outer(_overlap(rows, box[2], box[3]), _overlap(cols, box[0], box[1]))
        patch += coverage[..., None] * (_paint(rows, cols, box) - patch)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def _paint(rows: np.ndarray, cols: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """A part's colours: red, with a 5 px green/blue checker fixed to the part, so its texture moves exactly as it does."""
    checker = (np.floor((rows[:, None] + 0.5 - box[2]) / 5) + np.floor((cols[None] + 0.5 - box[0]) / 5)) % 2
    return np.stack([np.full_like(checker, GRIPPER_RED), 70 + 150 * checker, 20 + 60 * (1 - checker)], axis=-1)


def _overlap(pixels: np.ndarray, start: float, end: float) -> np.ndarray:
    return np.clip(np.minimum(pixels + 1, end) - np.maximum(pixels, start), 0, 1)


def describe(states: np.ndarray) -> str:
    """An instruction that says where the gripper goes and what its jaws do."""
    dx, dy, dgrip = (states[-1] - states[0]).tolist()
    direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    jaws = "open the gripper" if dgrip > 0 else "close the gripper"
    return f"move the gripper {direction} and {jaws}"


def gripper_centroid(frame: np.ndarray) -> tuple[float, float]:
    """(x, y) of the gripper in a decoded frame, from the red channel, which is linear in its coverage."""
    weight = (frame[..., 0].astype(np.float32) - TABLE_RED) / (GRIPPER_RED - TABLE_RED)
    rows, cols = np.nonzero(weight > 0.5)
    if not len(rows):
        raise ValueError("no gripper in frame")
    top, bottom = max(rows.min() - 3, 0), rows.max() + 4
    left, right = max(cols.min() - 3, 0), cols.max() + 4
    window = np.clip(weight[top:bottom, left:right], 0, 1)
    window[window < 0.1] = 0  # compression noise on the table would pull the centre towards the window's middle
    ys, xs = np.mgrid[top:bottom, left:right]
    # Pixel j is centred at j + 0.5 in the coordinates the gripper was drawn in.
    return float((window * (xs + 0.5)).sum() / window.sum()), float((window * (ys + 0.5)).sum() / window.sum())
