"""flow.still: flow is zeroed where neither frame changed, kept on and near what moved."""

from __future__ import annotations

import numpy as np

import flow
from flow.still import zero_unchanged
from latent_action.pairs import FlowSettings, episode_flows
from pyramid.episode import Episode, VideoCamera
from pyramid.video_io import write_video


def moving_square(frames: int = 3, step: int = 4) -> np.ndarray:
    """A textured square sliding right over a flat grey wall (the wall is where dense flow hallucinates)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    video = np.full((frames, 96, 128, 3), 120, np.uint8)
    for t in range(frames):
        video[t, 36:60, 20 + step * t : 44 + step * t] = texture
    return video


def test_flat_wall_far_from_the_motion_gets_zero_flow_and_the_mover_keeps_its_flow():
    video = moving_square()
    raw = flow.estimate(video, "farneback")
    masked = zero_unchanged(raw.copy(), video, 1, threshold=6, radius=3)
    far_wall = (slice(0, 20), slice(90, 128))
    assert np.abs(raw[0][far_wall]).max() >= 0.0  # whatever the estimator put there...
    assert np.abs(masked[0][far_wall]).max() == 0.0  # ...is gone
    mover = (slice(40, 56), slice(26, 40))
    assert np.allclose(masked[0][mover], raw[0][mover])
    assert masked[0][mover][..., 0].mean() > 2.0  # the square moves right by 4 px


def test_threshold_zero_is_off_and_a_moving_camera_keeps_everything():
    video = moving_square()
    raw = flow.estimate(video, "farneback")
    assert np.array_equal(zero_unchanged(raw.copy(), video, 1, threshold=0, radius=3), raw)
    scene = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)  # a textured room, seen panning
    panning = np.stack([np.roll(scene, 3 * t, axis=1) for t in range(3)])
    panned = flow.estimate(panning, "farneback")
    assert np.array_equal(zero_unchanged(panned.copy(), panning, 1, threshold=6, radius=3), panned)


def test_the_vae_flow_path_applies_the_mask_it_records(tmp_path):
    video = moving_square(frames=4)
    write_video(tmp_path / "square.mp4", video, fps=10.0, crf=0)
    episode = Episode(episode_id="still-0", source="test", embodiment="video", level=2, instructions=[], fps=10.0,
                      num_frames=len(video), cameras={"main": VideoCamera.open("main", tmp_path / "square.mp4")})
    plain = np.concatenate(list(episode_flows(episode, FlowSettings(backend="farneback", frame_height=96, frame_width=128))))
    masked = np.concatenate(list(episode_flows(episode, FlowSettings(backend="farneback", frame_height=96, frame_width=128,
                                                                      still_threshold=6, still_radius=3))))
    assert np.abs(masked[:, :20, 90:]).max() == 0.0
    assert np.allclose(masked[:, 40:56, 26:40], plain[:, 40:56, 26:40])
