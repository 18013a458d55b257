"""A folder of plain videos (mp4, mov, m4v, webm, mkv; avi as OpenCV's VideoWriter writes it; a camcorder's AVCHD
mts/m2ts): no state, no actions.

This is the unlabelled data latent actions exist for. An optional `<stem>.txt` beside a video
holds its instruction text. A recording whose frames are not evenly spaced (phones, screen capture) is read by
time (`VideoCamera.open(by_time=True)`): nothing else here is numbered by its frames.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

from pyramid.episode import Episode, EpisodeRef, VideoCamera
from pyramid.sources.base import Source, register, walk_files

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mts", ".m2ts"}


def _is_video(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_SUFFIXES and not name.startswith(".")


@register
class VideosSource(Source):
    name = "videos"
    default_level = 2  # unlabelled clips are mostly human/egocentric video; override per recipe
    default_embodiment = "video"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(isinstance(path, Path) for path in itertools.islice(walk_files(root, _is_video), 8))

    def discover(self) -> Iterator[EpisodeRef]:
        for path in self.walk(self.root, _is_video):
            yield path if isinstance(path, EpisodeRef) else self.ref(path.relative_to(self.root))

    def read(self, ref: EpisodeRef) -> Episode:
        path = self.resolve(ref.relpath)
        camera = VideoCamera.open("video", path, by_time=True)
        caption = self.resolve(Path(ref.relpath).with_suffix(".txt"))
        instructions = [caption.read_text(encoding="utf-8", errors="replace").strip()] if caption.is_file() else []
        return Episode(
            episode_id=ref.episode_id,
            source=self.name,
            embodiment=self.embodiment(),
            level=self.level,
            instructions=instructions,
            fps=camera.fps,  # no documented rate to fall back on: a missing or absurd one is reported by check_episode
            num_frames=camera.num_frames,
            cameras={"video": camera},
            metadata={"relpath": ref.relpath},
            path=str(path),
        )
