"""Decoding chosen frames: every shortcut (no probe decode, skipped non-reference frames, a kept
converter, seeking) gives exactly the frames of a plain decode of the whole video."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from pyramid.errors import EpisodeError
from pyramid.video_io import probe, read_clip, read_frame_chunks, read_frames, video_bytes, write_video
from tests.fixtures.media import moving_square_frames
from tests.fixtures import videos as video_fixtures
from tests.fixtures.videos import write_rotated_video


def moving_frames(count: int = 32, height: int = 96, width: int = 128) -> np.ndarray:
    """Texture that moves, so x264 uses P- and B-frames (and reference and non-reference B-frames)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    return np.stack([np.roll(texture, 3 * t, axis=1)[:, :width] for t in range(count)])


def plain_decode(source) -> np.ndarray:
    with av.open(source) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])])


def test_the_clip_has_non_reference_frames_to_skip():
    with av.open(io.BytesIO(video_bytes(moving_frames(), fps=10))) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        assert 0 < sum(1 for _ in container.decode(stream)) < 32


@pytest.mark.parametrize("start", range(0, 16, 3))
def test_a_clip_window_is_the_plain_decode_at_those_frames(start):
    clip = video_bytes(moving_frames(), fps=10)
    window = [start + 2 * k for k in range(9)]
    assert np.array_equal(read_clip(clip, window, "clip"), plain_decode(io.BytesIO(clip))[window])


def test_clip_frames_in_any_order_and_repeated():
    clip = video_bytes(moving_frames(), fps=10)
    assert np.array_equal(read_clip(clip, [7, 3, 3, 31], "clip"), plain_decode(io.BytesIO(clip))[[7, 3, 3, 31]])


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_truncated_clip_is_an_episode_error_naming_it(cut):
    clip = video_bytes(moving_frames(), fps=10)
    with pytest.raises(EpisodeError, match="shard-000000.tar:ep_c0000"):
        read_clip(clip[: int(len(clip) * cut)], [30, 31], "shard-000000.tar:ep_c0000")


def test_a_frame_past_the_end_of_a_clip_is_an_episode_error():
    with pytest.raises(EpisodeError, match="frame 40 is past the end"):
        read_clip(video_bytes(moving_frames(), fps=10), [2, 40], "clip")


@pytest.mark.parametrize("codec, suffix", [("libsvtav1", ".mp4"), ("libvpx-vp9", ".webm")])  # read by PyAV
@pytest.mark.parametrize("indices", [None, [0, 2, 4, 6], [5, 9, 13, 31], [17], [3, 3, 1]])
def test_file_frames_are_the_plain_decode_at_those_frames(tmp_path, codec, suffix, indices):
    path = write_video(tmp_path / f"video{suffix}", moving_frames(), fps=10, codec=codec)
    expected = plain_decode(str(path))
    assert np.array_equal(read_frames(path, indices), expected if indices is None else expected[indices])


@pytest.mark.parametrize("codec", ["libx264", "libsvtav1"])  # H.264 through decord, AV1 through PyAV's one pass
@pytest.mark.parametrize("indices, chunk", [(list(range(32)), 5), ([1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31], 4),
                                            ([6, 6, 9, 12], 3), ([20, 21, 22], 64), ([9, 2, 5], 2)])
def test_frame_chunks_are_the_frames_read_at_once_split(tmp_path, codec, indices, chunk):
    path = write_video(tmp_path / "video.mp4", moving_frames(), fps=10, codec=codec)
    chunks = list(read_frame_chunks(path, indices, chunk))
    assert [len(part) for part in chunks] == [len(indices[start : start + chunk]) for start in range(0, len(indices), chunk)]
    assert np.array_equal(np.concatenate(chunks), read_frames(path, indices))


@pytest.mark.parametrize("codec", ["libx264", "libsvtav1"])
def test_a_frame_chunk_past_the_end_is_an_episode_error_naming_the_file(tmp_path, codec):
    path = write_video(tmp_path / "video.mp4", moving_frames(), fps=10, codec=codec)
    with pytest.raises(EpisodeError, match=r"video\.mp4.*frame 40"):
        list(read_frame_chunks(path, [28, 30, 40], 2))


def write_variable_rate(path, frames: np.ndarray, codec: str) -> None:
    """A file whose frames are not evenly spaced (frames dropped, as in phone or screen recordings), with a
    keyframe every 4 frames so that reads seek."""
    pts = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 15, 16, 17, 18, 20, 21, 22, 24, 25][: len(frames)]
    video_fixtures.write_variable_rate(path, frames, pts, Fraction(1, 25), codec, gop=4)


@pytest.mark.parametrize("codec, suffix", [("libvpx-vp9", ".webm"), ("libsvtav1", ".mp4")])  # read by PyAV
def test_a_variable_frame_rate_file_numbers_frames_in_display_order(tmp_path, codec, suffix):
    path = tmp_path / f"phone{suffix}"
    write_variable_rate(path, moving_frames(20, 48, 64), codec)
    expected = plain_decode(str(path))
    assert len(expected) == 20 and probe(path).num_frames == 20
    assert np.array_equal(read_frames(path), expected)
    for indices in ([13, 14, 19], [4, 9, 11, 12], [0, 19]):  # the later ones seek to a keyframe past a gap
        assert np.array_equal(read_frames(path, indices), expected[indices])
        assert np.array_equal(np.concatenate(list(read_frame_chunks(path, indices, 2))), expected[indices])


def test_a_variable_frame_rate_clip_numbers_frames_in_display_order(tmp_path):
    """Not a clip a build writes, but one read as a clip: frame i is the i-th frame shown. Numbered by i / fps, frames
    3, 7, 11 and 15 here were past the end and 12-14 and 16-19 came a frame early."""
    path = tmp_path / "phone.mp4"
    write_variable_rate(path, moving_frames(20, 48, 64), "libx264")
    clip = path.read_bytes()
    expected = plain_decode(io.BytesIO(clip))
    assert len(expected) == 20
    for indices in ([0, 3, 4, 19], [12, 11, 11], list(range(20))):
        assert np.array_equal(read_clip(clip, indices, "clip"), expected[indices])


def test_a_clip_a_build_writes_is_read_without_listing_its_packets(monkeypatch):
    from pyramid import video_io

    def listed(*_):
        raise AssertionError("listed the packets of an evenly spaced clip")

    monkeypatch.setattr(video_io, "_shows_a_frame", listed)
    clip = video_bytes(moving_frames(), fps=10)
    assert np.array_equal(read_clip(clip, [9, 2], "clip"), plain_decode(io.BytesIO(clip))[[9, 2]])


def trimmed_or_uneven(path, kind: str):
    """A file numbered from its packets: cut without re-encoding (an edit list hides its first frames), or with frames
    not evenly spaced, in an mp4 or in MPEG-TS (whose reads seek past the frame and start again from the top)."""
    frames = moving_frames(20, 48, 64)
    if kind == "trimmed":
        return video_fixtures.write_stream_copy_cut(path.with_suffix(".mp4"), frames, first=5, gop=8, fps=10)
    if kind == "uneven":
        write_variable_rate(path.with_suffix(".webm"), frames, "libvpx-vp9")
        return path.with_suffix(".webm")
    pts = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 15, 16, 17, 18, 20, 21, 22, 24, 25]
    write_with_pts(path.with_suffix(".ts"), frames, pts, container_format="mpegts", gop=4)
    return path.with_suffix(".ts")


@pytest.mark.parametrize("kind", ["trimmed", "uneven", "uneven mpeg-ts"])
def test_the_packets_of_a_file_are_listed_once_for_all_its_reads(tmp_path, monkeypatch, kind):
    """Listing demuxes the whole file: its frame times, each chunk of an unordered read and a read that starts
    again from the top listed it again."""
    from pyramid import video_io
    from pyramid.video_io import PacketTimeline, file_timeline, frame_times

    path = trimmed_or_uneven(tmp_path / "video", kind)
    with av.open(str(path)) as container:
        assert isinstance(file_timeline(path, container.streams.video[0]), PacketTimeline)
    plain = plain_decode(str(path))
    times = frame_times(path)

    def listed(*_):
        raise AssertionError("listed the packets again")

    monkeypatch.setattr(video_io, "_shows_a_frame", listed)
    assert len(times) == len(plain)
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [12, 2, 9, 0], 1, decord=False))),
                          plain[[12, 2, 9, 0]])
    assert np.array_equal(read_frames(path, [12, 13], decord=False), plain[[12, 13]])


def test_only_a_file_whose_header_is_not_evenly_spaced_has_its_packets_listed(tmp_path):
    # listing the packets of a LeRobot v3 mp4 (hundreds of episodes) for each episode would cost more than decoding it
    from pyramid.video_io import ConstantRateTimeline, PacketTimeline, file_timeline

    even = write_video(tmp_path / "even.mp4", moving_frames(20, 48, 64), fps=30, codec="libsvtav1")
    uneven = tmp_path / "uneven.mp4"
    write_variable_rate(uneven, moving_frames(20, 48, 64), "libsvtav1")
    def timeline(path):
        with av.open(str(path)) as container:
            return file_timeline(path, container.streams.video[0])

    assert isinstance(timeline(even), ConstantRateTimeline) and isinstance(timeline(uneven), PacketTimeline)


def test_decord_leaves_pyav_its_own_libvpx(tmp_path):
    """decord loads its bundled FFmpeg and libvpx 6 with RTLD_GLOBAL: had it loaded before PyAV, PyAV's libavcodec
    would bind libvpx 6 and its VP9 encoder would not open ("Invalid argument"). video_io imports av first, so
    reading H.264 through decord and then writing VP9 works, in a fresh interpreter as in a worker."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import numpy as np
from pyramid.video_io import read_frames, video_bytes, write_video
frames = np.random.default_rng(0).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
write_video({str(tmp_path / 'a.mp4')!r}, frames, fps=10.0)
assert read_frames({str(tmp_path / 'a.mp4')!r}).shape == (6, 32, 48, 3)
import sys; assert "decord" in sys.modules  # H.264 went through decord
assert video_bytes(frames, 10.0, codec="libvpx-vp9", suffix=".webm")
"""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def chunked(frames: np.ndarray, sizes: list[int], shape=None):
    """`frames` as FrameChunks of the given chunk sizes, counting how many chunks were made."""
    from pyramid.video_io import FrameChunks

    made = []

    def make():
        start = 0
        for size in sizes:
            made.append(size)
            yield frames[start : start + size]
            start += size

    return FrameChunks(len(frames), shape or frames.shape[1:], make), made


def test_frames_encoded_chunk_by_chunk_are_the_frames_encoded_at_once():
    frames = moving_frames(20)
    lazy, made = chunked(frames, [7, 7, 6])
    assert video_bytes(lazy, fps=10) == video_bytes(frames, fps=10) and made == [7, 7, 6]
    shorter, _ = chunked(frames, [7, 7, 6])
    shorter.length = 12  # an export leaves out a run's last frames: no more chunks are made than that needs
    assert np.array_equal(read_frames_of(video_bytes(shorter, fps=10)), read_frames_of(video_bytes(frames[:12], fps=10)))


def read_frames_of(data: bytes) -> np.ndarray:
    return plain_decode(io.BytesIO(data))


def test_frame_chunks_that_make_too_few_or_misshapen_frames_say_so():
    frames = moving_frames(8)
    too_few, _ = chunked(frames, [4])
    with pytest.raises(ValueError, match="expected 8 frames, 4 were made"):
        video_bytes(too_few, fps=10)
    misshapen, _ = chunked(frames, [4, 4], shape=(48, 128, 3))
    with pytest.raises(ValueError, match=r"expected frames of shape \[48, 128, 3\], got \[96, 128, 3\]"):
        video_bytes(misshapen, fps=10)


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_a_video_with_a_display_rotation_is_read_as_players_show_it(tmp_path, degrees):
    shown = moving_square_frames(12, 48, 64)  # 8-pixel blocks, which x264 keeps (noise it would not)
    turns = round(degrees / 90) % 4
    path = write_rotated_video(tmp_path / "phone.mp4", np.rot90(shown, -turns, axes=(1, 2)), degrees)
    info = probe(path)
    assert (info.height, info.width, info.rotation) == (48, 64, degrees % 360)
    upright = np.rot90(plain_decode(str(path)), turns, axes=(1, 2))
    assert np.abs(upright.astype(int) - shown).mean() < 6  # the same picture, through a lossy codec
    assert np.array_equal(read_frames(path), upright)
    assert np.array_equal(read_frames(path, [5, 1, 1]), upright[[5, 1, 1]])  # the non-sequential path
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [0, 3, 4, 9], 3))), upright[[0, 3, 4, 9]])
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [9, 2, 4], 2))), upright[[9, 2, 4]])


def write_with_pts(path, frames: np.ndarray, pts: list[int], codec: str = "libx264", container_format: str | None = None,
                   gop: int | None = None, pix_fmt: str = "yuv420p") -> None:
    """A video whose frames carry the given timestamps (1/30 s apart per step), as a camera that drops frames writes."""
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=30, options={"g": str(gop)} if gop else {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = Fraction(1, 30)
        for image, stamp in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_one_frame_dropped_from_a_long_recording_keeps_every_later_frame_in_place(tmp_path):
    """1199 frames over 40 s at 30 fps: the average rate is within a thousandth of the base rate, but numbering the
    frames from their timestamps would put every frame after the gap one place late."""
    frames = moving_frames(1199, 32, 48)
    path = tmp_path / "dropped.mp4"
    write_with_pts(path, frames, [t for t in range(1200) if t != 100])
    plain = plain_decode(str(path))
    wanted = [99, 100, 400, 401, 1198]
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, wanted, 2))), plain[wanted])
    assert np.array_equal(read_frames(path, wanted[::-1]), plain[wanted[::-1]])


def test_an_mpeg_ts_file_gives_the_frames_asked_for_from_any_frame_on(tmp_path):
    """MPEG-TS seeks to the keyframe after a timestamp, not before it, and decord numbers its frames a GOP late."""
    path = tmp_path / "camera.ts"
    write_with_pts(path, moving_frames(30, 32, 48), list(range(30)), container_format="mpegts", gop=10)
    assert not probe(path).decord
    plain = plain_decode(str(path))
    assert np.array_equal(read_frames(path, [15, 16, 29]), plain[[15, 16, 29]])
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [12, 25], 1))), plain[[12, 25]])
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [25, 12], 1))), plain[[25, 12]])


def test_ten_bit_video_reads_the_same_on_every_path(tmp_path):
    """An iPhone's 10-bit HEVC: decord shifts its chroma by a row, so PyAV reads it on every path."""
    path = tmp_path / "iphone.mov"
    # 64x96: libx265 corrupts its heap on frames as small as 32x48, now and then
    write_with_pts(path, moving_frames(12, 64, 96), list(range(12)), codec="libx265", pix_fmt="yuv420p10le")
    assert not probe(path).decord and probe(path).codec == "hevc"
    everything = read_frames(path)
    assert np.array_equal(read_frames(path, [7, 2]), everything[[7, 2]])
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [2, 7, 9], 2))), everything[[2, 7, 9]])
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [9, 2], 1))), everything[[9, 2]])


def test_non_square_pixels_are_read_at_the_width_a_player_shows(tmp_path):
    """A DV camcorder's 720x480 frames have pixels 10/11 as wide as tall: read as stored, every shape and every
    horizontal motion (and the flow of it) is stretched by a tenth against the rest of the data."""
    shown = np.zeros((6, 120, 164, 3), np.uint8)
    for i in range(6):
        shown[i, 30:90, 40 + 4 * i : 100 + 4 * i] = (230, 200, 40)  # a 60x60 square, moving right
    path = video_fixtures.write_anamorphic(tmp_path / "camcorder.mp4", shown, Fraction(10, 11))
    info = probe(path)
    assert (info.height, info.width, info.decord) == (120, 164, False)
    frames = read_frames(path)
    assert frames.shape == shown.shape and np.abs(frames.astype(int) - shown).mean() < 4
    rows, columns = np.nonzero(frames[0, ..., 0] > 128)
    assert abs((columns.max() - columns.min()) - (rows.max() - rows.min())) <= 2  # square, as shown
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [1, 4], 1))), frames[[1, 4]])


def test_non_square_pixels_of_a_turned_recording_are_resampled_before_the_turn(tmp_path):
    """The pixel aspect ratio is the stored frame's: of its width, which a portrait display matrix shows as height."""
    shown = np.zeros((6, 164, 120, 3), np.uint8)
    for i in range(6):
        shown[i, 40 + 4 * i : 100 + 4 * i, 30:90] = (230, 200, 40)  # a 60x60 square, moving down
    path = video_fixtures.write_anamorphic(tmp_path / "camcorder.mp4", shown, Fraction(10, 11), degrees=-90)
    info = probe(path)
    assert (info.height, info.width, info.rotation, info.decord) == (164, 120, 270, False)
    frames = read_frames(path)
    assert frames.shape == shown.shape and np.abs(frames.astype(int) - shown).mean() < 4
    rows, columns = np.nonzero(frames[0, ..., 0] > 128)
    assert abs((columns.max() - columns.min()) - (rows.max() - rows.min())) <= 2  # square, as shown
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [1, 4], 1))), frames[[1, 4]])


@pytest.mark.parametrize("movflags", ["frag_keyframe", "frag_keyframe+empty_moov"])
def test_a_fragmented_mp4_counts_the_frames_of_every_fragment(tmp_path, movflags):
    """A live recorder's mp4 (OBS, a phone app, MediaRecorder): without `empty_moov` its header holds and counts the
    first fragment's 4 frames only, and an episode sized by that count left out the other 16."""
    path = video_fixtures.write_fragmented(tmp_path / "live.mp4", moving_frames(20, 48, 64), movflags, gop=4)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames < 20
    plain = plain_decode(str(path))
    info = probe(path)
    assert info.num_frames == len(plain) == len(read_frames(path)) == 20 and info.fps == 10
    assert np.array_equal(read_frames(path, [17, 3, 19]), plain[[17, 3, 19]])
    assert np.array_equal(read_frames(path, [17, 3, 19], decord=False), plain[[17, 3, 19]])
    assert np.array_equal(np.concatenate(list(read_frame_chunks(path, [5, 13, 19], 2))), plain[[5, 13, 19]])


def test_an_edit_list_that_plays_the_media_twice_is_read_as_played(tmp_path):
    """Frames 0-9 twice, 10-19 hidden: decord, which ignores the edit list, gave frames 0, 1, 2, 0, 1... at 13-19."""
    path = video_fixtures.write_edit_list(tmp_path / "loop.mp4", moving_frames(20, 48, 64), [(10, 0), (10, 0)])
    plain = plain_decode(str(path))
    assert len(plain) == 20 and np.array_equal(plain[10:], plain[:10])
    info = probe(path)
    assert (info.num_frames, info.fps, info.decord) == (20, 10, False)
    assert np.array_equal(read_frames(path, [13, 19, 2]), plain[[13, 19, 2]])
    assert np.array_equal(read_frames(path), plain)


def test_probing_an_ordinary_mp4_reads_only_up_to_its_first_frame(tmp_path, monkeypatch):
    """Counting every packet of a LeRobot v3 mp4 (hundreds of episodes) for each episode would cost more than
    decoding it: an mp4 whose header, index and duration agree is taken at its header's word."""
    from pyramid import video_io

    path = write_video(tmp_path / "even.mp4", moving_frames(60, 48, 64), fps=30)
    seen = []

    def spy(packet):
        seen.append(packet.pts)
        return packet.size > 0 and not packet.is_discard

    monkeypatch.setattr(video_io, "_shows_a_frame", spy)
    assert probe(path).num_frames == 60 and len(seen) < 10
