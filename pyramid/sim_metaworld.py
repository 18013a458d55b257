"""MetaWorld sample data: scripted-expert Sawyer episodes, rendered in 3-D and written as a LeRobot v3.0 dataset.

The 2-D sample (`sample_data.py`) checks the plumbing; latent-action models also need real arm motion
with perspective, occlusion and objects that move, and actions known exactly. Each task's scripted
MetaWorld policy runs on several variations (object and goal positions) with Gaussian action noise.
What is recorded per step t: the frame and state (hand xyz, gripper opening) *before* action t, and
the action actually executed (the noisy, clipped one), so actions[t] takes frame t to frame t + 1.
An episode runs until MetaWorld reports success, then SETTLE_STEPS more, at most `max_steps`.

Needs the `sim` extra (pip install -e '.[sim]'); rendering is offscreen through EGL.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import warnings
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pyramid.lerobot_writer import RecordedEpisode, write_lerobot_v3
from pyramid.sample_data import check_replaceable

# Six tasks with clearly different arm motions whose scripted policies succeed on all 8 train variations
# with 0.1 action noise (door-open-v3 fails one, so window-open-v3 takes its place).
DEFAULT_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "drawer-open-v3", "button-press-topdown-v3", "window-open-v3")
INSTRUCTIONS = {
    "reach-v3": "move the gripper to the goal",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "drawer-open-v3": "pull the drawer open",
    "drawer-close-v3": "push the drawer closed",
    "button-press-topdown-v3": "press the button down from above",
    "button-press-v3": "press the button from the front",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "door-open-v3": "open the door",
    "door-close-v3": "close the door",
}
# The cameras every Sawyer scene defines (metaworld/assets/objects/assets/xyz_base.xml).
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper"]
ACTION_NAMES = ["x", "y", "z", "grip"]
ROBOT_TYPE = "sawyer"
SETTLE_STEPS = 10  # recorded after success, so every episode ends on the finished task
MAX_PATH_LENGTH = 500  # MetaWorld refuses to step an env further without a reset
# H.264, not LeRobot's default AV1: the SVT-AV1 encoder bundled with PyAV deadlocks (idle, in
# svt_av1_enc_send_picture) on some of these long multi-episode files under load; the 2-D sample keeps AV1.
VIDEO_CODEC = "libx264"
INSTALL_HINT = "pip install -e '.[sim]'"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one episode did: its task, variation, length in frames and whether it reached success."""

    task: str
    variation: int
    frames: int
    success: bool


@dataclass(frozen=True)
class MetaWorldSample:
    """The written dataset's root and one `Outcome` per episode, in the order written."""

    root: Path
    outcomes: tuple[Outcome, ...]

    @property
    def frames(self) -> int:
        return sum(outcome.frames for outcome in self.outcomes)

    def summary(self) -> str:
        successes = sum(outcome.success for outcome in self.outcomes)
        failed = [f"{o.task}#{o.variation}" for o in self.outcomes if not o.success]
        line = f"{len(self.outcomes)} episodes, {self.frames} frames, {successes}/{len(self.outcomes)} reached success"
        return line + (f" (not: {', '.join(failed)})" if failed else "")


@dataclass(frozen=True)
class _Settings:
    cameras: tuple[str, ...]
    height: int
    width: int
    action_noise: float
    max_steps: int
    seed: int


@dataclass(frozen=True)
class _Job:
    task: str
    variation: int
    metaworld_task: Any  # metaworld.Task: the pickled object/goal placement of this variation


def write_metaworld_sample(
    out_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] = DEFAULT_TASKS,
    variations: int = 8,
    cameras: Sequence[str] = ("corner",),
    height: int = 384,
    width: int = 320,
    fps: int = 30,
    action_noise: float = 0.1,
    max_steps: int = 200,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> MetaWorldSample:
    """Write `<out_dir>/metaworld` (LeRobot v3.0, H.264): `variations` episodes of each task, replacing it if it exists.

    Each camera becomes a video feature `observation.images.<camera>`, the first the primary one. The same
    seed writes the same variations, actions, states and video whatever `workers` is. Returns the root and
    what each episode did; one that never reached success is kept (at `max_steps` frames) and logged.
    """
    tasks, cameras = _names(tasks), _names(cameras)
    metaworld = _import_sim()
    settings = _Settings(cameras, int(height), int(width), float(action_noise), int(max_steps), int(seed))
    _check_arguments(metaworld, tasks, variations, fps, settings, workers)
    out_dir = Path(out_dir)
    check_replaceable(out_dir / "metaworld", ROBOT_TYPE)
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    results = _run_ordered(_jobs(metaworld, tasks, variations, seed), settings, workers)
    episodes = _recorded(results, outcomes, total=len(tasks) * variations, progress=progress)
    root = write_lerobot_v3(out_dir / "metaworld", episodes, fps=fps, robot_type=ROBOT_TYPE, state_names=STATE_NAMES,
                            action_names=ACTION_NAMES, overwrite=True, codec=VIDEO_CODEC)
    failed = [outcome for outcome in outcomes if not outcome.success]
    if failed:
        log.warning("%d of %d MetaWorld episodes never reached success in %d steps (kept): %s", len(failed),
                    len(outcomes), max_steps, ", ".join(f"{o.task}#{o.variation}" for o in failed))
    return MetaWorldSample(root, tuple(outcomes))


def instruction(task: str) -> str:
    """The LeRobot task string of a MetaWorld task."""
    return INSTRUCTIONS.get(task) or task.removesuffix("-v3").replace("-", " ")


def _names(names: str | Sequence[str]) -> tuple[str, ...]:
    return (names,) if isinstance(names, str) else tuple(names)


def _import_sim() -> Any:
    os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen, no display; read when mujoco is first imported
    try:
        import metaworld
        import mujoco  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--sim metaworld needs metaworld and mujoco ({exc}): {INSTALL_HINT}") from None
    return metaworld


def _check_arguments(metaworld: Any, tasks: tuple[str, ...], variations: int, fps: int, settings: _Settings,
                     workers: int) -> None:
    known = metaworld.env_dict.ALL_V3_ENVIRONMENTS
    unknown = [task for task in tasks if task not in known]
    problems = [f"unknown MetaWorld task(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"] if unknown else []
    if not tasks:
        problems.append("no tasks given")
    if bad := [camera for camera in settings.cameras if camera not in CAMERAS]:
        problems.append(f"unknown camera(s) {', '.join(bad)} (known: {', '.join(CAMERAS)})")
    if not settings.cameras or len(set(settings.cameras)) != len(settings.cameras):
        problems.append("cameras must name at least one camera, each once")
    if not 1 <= variations <= 50:  # MT1 makes 50 train variations per task
        problems.append(f"variations must be 1-50, got {variations}")
    if not 1 <= settings.max_steps <= MAX_PATH_LENGTH:
        problems.append(f"max_steps must be 1-{MAX_PATH_LENGTH}, got {settings.max_steps}")
    if settings.height % 2 or settings.width % 2 or min(settings.height, settings.width) < 16:
        problems.append(f"frame size must be even and at least 16, got {settings.height}x{settings.width}")
    if settings.action_noise < 0 or workers < 1 or fps < 1:
        problems.append("action_noise must be >= 0, workers and fps >= 1")
    if problems:
        raise ValueError("; ".join(problems))


def _jobs(metaworld: Any, tasks: Iterable[str], variations: int, seed: int) -> Iterator[_Job]:
    """Task-major episode jobs. Built lazily: each MT1 costs about a second (it resets an env 50 times)."""
    for task in tasks:
        placements = metaworld.MT1(task, seed=seed).train_tasks
        for variation in range(variations):
            yield _Job(task, variation, placements[variation])


def _run_ordered(jobs: Iterator[_Job], settings: _Settings, workers: int) -> Iterator[tuple[_Job, RecordedEpisode, bool]]:
    """Run the jobs on `workers` processes, yielding results in job order with at most 2 per worker in flight."""
    if workers == 1:
        simulator = _Simulator(settings)
        try:
            yield from map(simulator.run, jobs)
        finally:
            simulator.close()
        return
    # spawn, not fork: a forked child would inherit the parent's threads (pyarrow's, the encoder's) mid-flight.
    # An executor, not a Pool: a worker that dies (a crash in the GL driver) fails the run instead of hanging it.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(settings,))
    try:
        pending = deque(pool.submit(_run_in_worker, job) for job in islice(jobs, 2 * workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(_run_in_worker, job) for job in islice(jobs, 1))
            yield result
    finally:
        pool.shutdown(cancel_futures=True)  # the workers exit on their own, closing their renderers


def _recorded(results: Iterable[tuple[_Job, RecordedEpisode, bool]], outcomes: list[Outcome], total: int,
              progress: bool) -> Iterator[RecordedEpisode]:
    from tqdm import tqdm

    with tqdm(total=total, unit="episode", desc="metaworld", disable=not progress) as bar:
        for job, episode, success in results:
            outcomes.append(Outcome(job.task, job.variation, len(episode.state), success))
            bar.set_postfix(failed=sum(not outcome.success for outcome in outcomes), refresh=False)
            bar.update()
            yield episode


_WORKER_SIMULATOR: "_Simulator | None" = None


def _start_worker(settings: _Settings) -> None:
    global _WORKER_SIMULATOR
    _import_sim()
    _WORKER_SIMULATOR = _Simulator(settings, close_at_exit=True)


def _run_in_worker(job: _Job) -> tuple[_Job, RecordedEpisode, bool]:
    assert _WORKER_SIMULATOR is not None
    return _WORKER_SIMULATOR.run(job)


class _Simulator:
    """One MetaWorld env at a time, reused across a task's variations: its first render (GL context, textures) costs ~1 s."""

    def __init__(self, settings: _Settings, close_at_exit: bool = False):
        self.settings, self.close_at_exit = settings, close_at_exit
        self.task: str | None = None
        self.env: Any = None

    def run(self, job: _Job) -> tuple[_Job, RecordedEpisode, bool]:
        env = self._env_for(job.task)
        env.set_task(job.metaworld_task)
        rng = np.random.default_rng([self.settings.seed, zlib.crc32(job.task.encode()), job.variation])
        with warnings.catch_warnings():
            # Scripted policies warn whenever their proportional gain exceeds the [-1, 1] action range.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            state, actions, videos, success = _rollout(env, _policy(job.task), rng, self.settings)
        if self.close_at_exit:
            # Registered after the first render, where mujoco registers its own eglTerminate, so this runs
            # first (atexit is last in, first out): a context freed after eglTerminate prints EGLError tracebacks.
            atexit.register(self.close)
            self.close_at_exit = False
        return job, RecordedEpisode(instruction(job.task), state, actions, videos), success

    def _env_for(self, task: str) -> Any:
        if task != self.task:
            self.close()
            self.env, self.task = _make_env(task, self.settings), task
        return self.env

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env, self.task = None, None


def _make_env(task: str, settings: _Settings) -> Any:
    import metaworld

    env = metaworld.env_dict.ALL_V3_ENVIRONMENTS[task](render_mode="rgb_array", camera_name=settings.cameras[0],
                                                       width=settings.width, height=settings.height)
    # Shadows, reflections and multisampling make rendering ~6x slower; the frames stay clear without them.
    env.model.vis.quality.shadowsize = 0
    env.model.vis.quality.offsamples = 0
    return env


def _policy(task: str) -> Any:
    """MetaWorld's scripted expert: `pick-place-v3` -> `SawyerPickPlaceV3Policy`."""
    from metaworld import policies

    words = task.removesuffix("-v3").split("-")
    name = "Sawyer" + "".join(word.capitalize() for word in words) + "V3Policy"
    if not hasattr(policies, name):
        raise ValueError(f"MetaWorld has no scripted policy for {task} (looked for {name})")
    return getattr(policies, name)()


def _rollout(env: Any, policy: Any, rng: np.random.Generator,
             settings: _Settings) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], bool]:
    """Run one episode from reset; frame and state t are recorded before action t is applied."""
    import mujoco

    obs, _ = env.reset()
    # Some tasks (push-v3) move the goal site after reset's last forward pass, so frame 0 would show the
    # previous episode's goal, and differ with the history of the env.
    mujoco.mj_forward(env.model, env.data)
    camera = _Cameras(env, settings.cameras)
    states, actions, frames = [obs[:4]], [], [camera.render()]
    success_at = None
    for step in range(1, settings.max_steps + 1):
        action = np.clip(policy.get_action(obs) + rng.normal(0.0, settings.action_noise, 4), -1.0, 1.0)
        actions.append(action)
        obs, _, _, _, info = env.step(action.astype(np.float32))
        if success_at is None and info["success"]:
            success_at = step
        if step == settings.max_steps or (success_at is not None and step >= success_at + SETTLE_STEPS):
            break
        states.append(obs[:4])
        frames.append(camera.render())
    videos = {f"observation.images.{name}": np.stack([frame[i] for frame in frames])
              for i, name in enumerate(settings.cameras)}
    return np.asarray(states, np.float32), np.asarray(actions, np.float32), videos, success_at is not None


class _Cameras:
    """Renders each named camera, turned so that up in the world is up in the image."""

    def __init__(self, env: Any, names: Sequence[str]):
        import mujoco

        self.viewer = env.mujoco_renderer._get_viewer("rgb_array")  # created on first use; the flags live on its scene
        self.viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self.viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.ids = [mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, name) for name in names]
        self.upside_down = [_is_upside_down(env.data, camera_id) for camera_id in self.ids]

    def render(self) -> list[np.ndarray]:
        frames = []
        for camera_id, upside_down in zip(self.ids, self.upside_down):
            frame = self.viewer.render("rgb_array", camera_id=camera_id)
            frames.append(frame[::-1, ::-1] if upside_down else frame)
        return frames


def _is_upside_down(data: Any, camera_id: int) -> bool:
    """Whether a camera's image-up axis points down in the world.

    The corner cameras of MetaWorld's scene are mounted that way. Turning their image by 180 degrees
    is the same as rolling the camera about its optical axis, so the result is still a true view;
    flipping rows only would mirror the scene left to right.
    """
    up_in_world = np.asarray(data.cam_xmat[camera_id]).reshape(3, 3)[:, 1]  # columns: camera x, y, z in world
    return bool(up_in_world[2] < 0)
