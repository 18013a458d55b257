"""Which cameras of an episode a build stores, and how they are laid out in one frame.

`primary` (the reader's first camera), one named camera, or Motus's T-layout (`cam_concatenated` in
its loaders): the head camera on top at its own size, the two wrist cameras below at half size, side
by side. Each wrist picture is fitted into its half-size cell keeping its aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Iterator, Literal, Sequence, Union

import numpy as np
from pydantic import BeforeValidator, Field

from pyramid.errors import EpisodeError
from pyramid.yaml_config import Strict


class CameraLayoutSpec(Strict):
    """A recipe's (or a VAE config's) `cameras: {layout: t, names: [...]}`."""

    layout: Literal["t"] = Field(description="t: the head camera on top, the two wrist cameras at half size below (Motus's cam_concatenated).")
    names: tuple[str, str, str] = Field(description="[head, left wrist, right wrist] camera names of the dataset.")


def _camera_name(value):
    if isinstance(value, str) and (not value.strip() or any(mark in value for mark in ":,")):  # `--cameras t:a,b,c`
        raise ValueError(f"{value!r} is not a camera name: give 'primary', one camera's name, or "
                         "{layout: t, names: [head, left_wrist, right_wrist]}")
    return value


# A recipe's (or a VAE config's) `cameras:`: 'primary', a camera name, or a layout.
Cameras = Annotated[Union[str, CameraLayoutSpec], BeforeValidator(_camera_name)]


# How messages name a layout.
LAYOUT_WORDS = {"single": "one camera's view", "t": "T-layout views (the head camera above two wrist cameras)"}


def layouts_in_words(layouts) -> str:
    """`layouts` ("single", "t") as a message names them."""
    return " and ".join(LAYOUT_WORDS[layout] for layout in layouts)


def reordered_t_layout(view: "CameraView", trained: Sequence[Sequence[str]]) -> str | None:
    """Where a T-layout `view` names the cameras of one a VAE was trained on (`trained`, head first) in another order,
    what is wrong, in words: its head and wrist pictures would sit in each other's places. Other names pass, as datasets
    name the same cameras differently."""
    if view.layout != "t":
        return None
    for names in trained:
        if set(names) == set(view.names) and tuple(names) != view.names:
            return (f"cameras t:{','.join(view.names)} are the VAE's training T-layout t:{','.join(names)} in another order "
                    "(the head camera first, then the left wrist, then the right wrist)")
    return None


@dataclass(frozen=True)
class CameraView:
    names: tuple[str, ...] = ()  # () = the episode's primary camera
    layout: str = "single"  # "single" | "t" (names = head, left wrist, right wrist)
    fit: str = "pad"  # how a wrist picture fills its cell: "pad" | "crop"

    @classmethod
    def of_recipe(cls, cameras, fit: str) -> "CameraView":
        """From a source's `cameras:` (`primary`, a camera name, or `{layout: t, names: [head, left, right]}`)."""
        if isinstance(cameras, str):
            return cls((), "single", fit) if cameras == "primary" else cls((cameras,), "single", fit)
        return cls(tuple(cameras.names), cameras.layout, fit)

    @classmethod
    def of_option(cls, text: str, fit: str) -> "CameraView":
        """From a command's `--cameras`: `primary`, a camera name, or `t:HEAD,LEFT_WRIST,RIGHT_WRIST`; a ValueError
        saying what is wrong otherwise."""
        layout, colon, names = text.partition(":")
        if not colon:
            return cls.of_recipe(text.strip() or "primary", fit)
        names = tuple(name.strip() for name in names.split(","))
        if layout.strip() != "t" or len(names) != 3 or not all(names):
            raise ValueError(f"--cameras {text!r}: expected 'primary', a camera name, or 't:HEAD,LEFT_WRIST,RIGHT_WRIST'")
        return cls(names, "t", fit)

    def as_option(self) -> str:
        """The view as `--cameras` names it (`of_option`)."""
        if self.layout == "t":
            return "t:" + ",".join(self.names)
        return self.names[0] if self.names else "primary"

    def cameras_of(self, episode) -> list[str]:
        """The episode's cameras this view uses, or an EpisodeError naming the missing one and those it has."""
        names = list(self.names) or [episode.primary_camera]
        for name in names:
            if name not in episode.cameras:
                raise EpisodeError(episode.path, f"no camera '{name}' (cameras asked for: {list(self.names)}; "
                                                 f"the episode has {sorted(episode.cameras)})")
        return names

    def describe(self, episode) -> dict:
        """What the clip json records: the cameras used, in layout order, and the layout."""
        return {"cameras": self.cameras_of(episode), "layout": self.layout}

    def frames(self, episode, indices: Sequence[int]) -> np.ndarray:
        """uint8 RGB [N, H', W', 3] at source resolution: one camera's frames, or the T-layout of three."""
        names = self.cameras_of(episode)
        if self.layout == "single":
            return episode.frames(names[0], indices=list(indices))
        head, left, right = (episode.frames(name, indices=list(indices)) for name in names)
        return t_layout(head, left, right, self.fit)

    def frame_chunks(self, episode, indices: Sequence[int], chunk: int,
                     at_least: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
        """`frames(episode, indices)` as consecutive arrays of at most `chunk` frames (see `Episode.frame_chunks`),
        for a caller that fits them to a size covering `at_least` (height, width) where that is given."""
        names, indices = self.cameras_of(episode), list(indices)
        if self.layout == "single":
            yield from episode.frame_chunks(names[0], indices, chunk, at_least)
            return
        cameras = (episode.frame_chunks(name, indices, chunk, at_least) for name in names)
        for head, left, right in zip(*cameras, strict=True):
            yield t_layout(head, left, right, self.fit)


def t_layout(head: np.ndarray, left: np.ndarray, right: np.ndarray, fit: str = "pad") -> np.ndarray:
    """[N, H + H//2, W, 3]: head on top, left and right wrist below, each in a (H//2, W//2) cell (W - W//2 on the right)."""
    from pyramid.clips import resize_frames

    height, width = head.shape[1:3]
    cell = height // 2
    bottom = np.concatenate([resize_frames(left, (cell, width // 2), fit),
                             resize_frames(right, (cell, width - width // 2), fit)], axis=2)
    return np.concatenate([head, bottom], axis=1)
