"""Reading and writing video files: decord for frames read at once where it decodes them as PyAV does
(`_decord_decodes`), PyAV elsewhere (AV1, 10-bit, rotated, MPEG-TS...) and for frames read chunk by chunk in one pass
(a build's stored frames), where decord would decode ahead into memory.

Frames are always uint8 RGB arrays shaped [N, H, W, 3], upright, at the width and in the SDR colours a player shows
them: a phone's portrait recording stores its sensor's landscape frames with a display matrix, and the frames are
turned as it says; a camcorder's non-square pixels are resampled to square ones; interlaced video is deinterlaced; HDR
video (HLG, PQ) is tone-mapped (`pyramid/hdr.py`).
"""

from __future__ import annotations

import functools
import io
import math
import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

# av before decord (imported lazily below): decord loads its own FFmpeg and libvpx 6 with RTLD_GLOBAL, and
# PyAV's libraries loaded after it would bind those instead of theirs (its VP9 encoder then fails to open).
import av
import av.filter
import numpy as np
from av.video.reformatter import VideoReformatter

from pyramid.atomic import atomic_write
from pyramid.errors import EpisodeError, debugging
from pyramid.hdr import HDR_TRANSFERS, is_hdr, to_sdr
from pyramid.paths import file_version

# decord bundles an FFmpeg without an AV1 decoder; asking it anyway fails or yields garbage.
CODECS_DECORD_CANNOT_DECODE = {"av1", "libdav1d", "libaom-av1", "vp9"}
FIELD_ORDERS_PROGRESSIVE = (0, 1)  # FFmpeg's AV_FIELD_UNKNOWN, AV_FIELD_PROGRESSIVE; the others are interlaced
MP4_DEMUXER = "mov,mp4,m4a,3gp,3g2,mj2"  # FFmpeg's, for mp4 and mov alike
# Containers with an index decord reads frames from correctly; in MPEG-TS it returns frames a GOP late, silently.
CONTAINERS_DECORD_READS = {MP4_DEMUXER, "matroska,webm", "avi"}


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int  # as shown, after the display rotation
    width: int
    codec: str
    rotation: int = 0  # degrees a player turns the stored frames counter-clockwise: 0, 90, 180 or 270
    decord: bool = False  # whether decord decodes it as PyAV does (`_decord_decodes`); else PyAV decodes it
    constant_rate: bool = True  # whether its header shows evenly spaced frames (`_constant_rate`); else its timestamps tell


def video_stream(container, path: Path):
    """The video stream a player shows: FFmpeg's pick, as decord's, which passes over a still image (a cover or
    thumbnail track) listed before the video and, among several videos, takes the one with the most bits."""
    stream = container.streams.best("video")
    if stream is None:
        raise EpisodeError(path, "no video stream")
    return stream


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read frame count, rate, size and codec from the container, counting packets if needed. A file's are read once
    while it is unchanged: a LeRobot v3 mp4 holds thousands of episodes, each of which probes it."""
    try:
        version = file_version(path)
    except OSError:
        return _probe(str(path))  # says what is wrong with the path, as opening it does
    return _probe_unchanged(str(path), version)


@functools.lru_cache(maxsize=32)
def _probe_unchanged(path: str, version: tuple[int, int, int]) -> VideoInfo:
    """`_probe` of a file, kept by its inode, size and modification time too (as `_file_timestamps`)."""
    return _probe(path)


def _probe(path: str | os.PathLike) -> VideoInfo:
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = video_stream(container, path)
            packets = _scan_packets(container, stream, count=_header_count_doubtful(container, stream))
            # More frames than the header counts where they were counted (webm/mkv store no count, a fragmented mp4
            # counts those in its header only); fewer is a file cut short, which reading it reports ("past the end").
            num_frames = max(stream.frames, packets.shown)
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            if packets.trimmed:  # the header counts the hidden frames, and its average rate spreads them over the rest
                num_frames, fps = packets.shown, packets.mean_rate(stream.time_base) or fps
            stored_width, stored_height = _stored_size(stream) or (stream.width, stream.height)
            rotation = packets.rotation
            height, width = (stored_width, stored_height) if rotation % 180 else (stored_height, stored_width)
            return VideoInfo(num_frames, fps, height, width, stream.codec_context.name, rotation,
                             _decord_decodes(container, stream, packets), _constant_rate(stream) and not packets.trimmed)
    except EpisodeError:
        raise
    except (av.error.FFmpegError, OSError) as exc:
        raise EpisodeError(path, f"cannot open video ({_reason(exc)})") from exc


@dataclass
class _PacketScan:
    shown: int = 0  # packets holding frames a player shows, all of them only where counted
    earliest: int | None = None  # their earliest and latest timestamps
    latest: int | None = None
    rotation: int = 0  # the display rotation, from the first frame, which carries the stream's display matrix
    trimmed: bool = False  # an edit list hides frames (see `_scan_packets`)
    interlaced: bool = False  # the first frame is (a camcorder's, broadcast): PyAV deinterlaces it, decord would not

    def count(self, pts: int | None) -> None:
        self.shown += 1
        if pts is not None:
            self.earliest = pts if self.earliest is None else min(self.earliest, pts)
            self.latest = pts if self.latest is None else max(self.latest, pts)

    def mean_rate(self, time_base: Fraction) -> float | None:
        """Frames per second from the first frame to the last."""
        span = (self.latest - self.earliest) * time_base if self.shown > 1 and self.latest is not None else 0
        return float((self.shown - 1) / span) if span > 0 else None


def _scan_packets(container, stream, count: bool) -> _PacketScan:
    """The display rotation and interlacing, and with `count` every shown frame's packet. Decoding stops at the first
    frame.

    A clip cut without re-encoding (`ffmpeg -ss T -i in.mp4 -c copy`, an iPhone's trim, LosslessCut) starts at the
    keyframe before the cut, and its edit list hides the frames up to the cut: FFmpeg flags their packets `discard`
    and decodes them without returning them. They come first, before the first frame is returned; where they are,
    every packet is counted, as the header counts the hidden frames too, and decord, which shows them, is not used.
    Frames hidden later (at the end, in the middle) are seen where every packet is counted
    (`_header_count_doubtful`)."""
    scan, first = _PacketScan(), None
    for packet in container.demux(stream):
        scan.trimmed |= packet.is_discard
        if _shows_a_frame(packet):
            scan.count(packet.pts)
        if first is None:
            first = _first_frame(packet)
        if first is not None and not (count or scan.trimmed):
            break
    scan.rotation, scan.interlaced = first or (0, False)
    return scan


def _header_count_doubtful(container, stream) -> bool:
    """Whether the header's frame count may not be the frames a player shows, so that every packet is counted: webm,
    mkv and MPEG-TS keep no count, and the headers below count more or fewer. Decided from the header and FFmpeg's
    index alone: counting the packets of every LeRobot v3 mp4 (hundreds of episodes) for each episode would cost
    more than decoding it."""
    return stream.frames <= 0 or _counts_hidden_frames(stream) or _index_or_duration_disagrees(container, stream)


def _counts_hidden_frames(stream) -> bool:
    """The header counts more frames than its duration holds at its rate: an edit list shorter than the media hides
    some, as a trim that does not re-encode writes it where it cuts the end (the duration is the edit's, the frame
    count and the rate the media's). Its packets are counted, those hidden flagged `discard`, as at a cut start."""
    excess = _frames_beyond_duration(stream)
    return excess is not None and excess > 1


def _index_or_duration_disagrees(container, stream) -> bool:
    """The header counts fewer frames than its duration holds, or than FFmpeg's index of the mp4 lists. The header of a
    fragmented mp4, as live recorders write one to survive a crash (OBS, phone apps, browsers' MediaRecorder, `ffmpeg
    -movflags frag_keyframe`), counts only the frames in it, not those of the fragments after it, which the index
    lists (or, where a `sidx` box lists the fragments and they are read as they come, the duration spans). An index
    of another length is also an edit list's that plays the media twice or hides some of it in the middle: its
    packets are counted, those hidden flagged `discard`, and decord, which shows them, is not used."""
    excess = _frames_beyond_duration(stream)
    return (excess is not None and excess < -1) or (
        container.format.name == MP4_DEMUXER and len(stream.index_entries) != stream.frames)


def _frames_beyond_duration(stream) -> float | None:
    """How many more frames the header counts than its duration holds at its average rate; None where it lacks
    either (webm and mkv keep no frame count)."""
    if not (stream.frames > 0 and stream.duration and stream.average_rate):
        return None
    return stream.frames - float(stream.duration * stream.time_base) * float(stream.average_rate)


def _shows_a_frame(packet) -> bool:
    """Whether the packet holds a frame a player shows: not an empty flush packet, nor one an edit list hides."""
    return packet.size > 0 and not packet.is_discard


def _first_frame(packet) -> tuple[int, bool] | None:
    """(display rotation, interlaced) of the first frame the packet decodes to; None where it decodes to none yet."""
    try:
        for frame in packet.decode():
            return _quarter_turns(frame.rotation) * 90, frame.interlaced_frame
    except av.error.FFmpegError:
        return 0, False  # a first frame that does not decode: decoding the video reports it, naming the file
    return None


def _shown_width(stream) -> int | None:
    """The width a player shows frames at, where their pixels are not square (DV and HDV camcorders, anamorphic
    video: 720x480 at 10:11 shows 655 wide); None where they are."""
    aspect = stream.sample_aspect_ratio
    return round(stream.width * aspect) if aspect and aspect != 1 else None


def _quarter_turns(degrees: float) -> int:
    return int(round(degrees / 90)) % 4


def _decord_decodes(container, stream, packets: _PacketScan) -> bool:
    """Where decord gives the frames PyAV gives, the same arrays. It cannot decode AV1 or VP9, fails on a display
    rotation, ignores non-square pixels, HDR, interlacing and the frames an edit list hides, shifts the chroma of 10-bit
    video by a row, places colour differently at odd sizes, and numbers the frames of an MPEG-TS file a GOP late: PyAV
    decodes those."""
    pixels = stream.codec_context.format
    return (stream.codec_context.name not in CODECS_DECORD_CANNOT_DECODE and not packets.rotation
            and not (packets.trimmed or packets.interlaced) and not _shown_width(stream)
            and stream.codec_context.color_trc not in HDR_TRANSFERS
            and container.format.name in CONTAINERS_DECORD_READS and pixels is not None
            and all(component.bits == 8 for component in pixels.components)
            and stream.width % 2 == 0 and stream.height % 2 == 0)


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | None = None,
    decord: bool | None = None,
) -> np.ndarray:
    """Decode the frames at `indices` (all frames when None) as uint8 RGB [N, H, W, 3]. `decord`, from an earlier
    `probe` (`VideoInfo.decord`), saves probing again."""
    path = Path(path)
    if decord is None:
        decord = probe(path).decord
    if decord:
        try:
            return _read_with_decord(path, indices)
        except EpisodeError:
            raise
        except Exception:  # decord fails on some streams PyAV handles; fall through
            pass
    return _read_with_pyav(path, indices)


def _open_decord(path: Path):
    import decord

    # decord's own FFmpeg prints its complaints about a damaged file to stderr, lines naming no file, beside the
    # one-line error that names it (PyAV keeps FFmpeg's log off); they are for `--debug`.
    decord.logging.set_level(decord.logging.INFO if debugging() else decord.logging.QUIET)
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


def _read_with_decord(path: Path, indices: Sequence[int] | None) -> np.ndarray:
    reader = _open_decord(path)
    total = len(reader)
    wanted = list(range(total)) if indices is None else [int(i) for i in indices]
    _check_indices(path, wanted, total)
    if not wanted:
        height, width = reader[0].shape[:2] if total else (0, 0)
        return np.zeros((0, height, width, 3), np.uint8)
    return reader.get_batch(wanted).asnumpy()


def _read_with_pyav(path: Path, indices: Sequence[int] | None) -> np.ndarray:
    wanted = None if indices is None else [int(i) for i in indices]
    if wanted is not None and not wanted:
        info = probe(path)
        return np.zeros((0, info.height, info.width, 3), np.uint8)
    lookup, last = (None, None) if wanted is None else (set(wanted), max(wanted))
    frames = dict(_decoded_from(path, 0 if wanted is None else min(wanted), lookup, last))
    if wanted is None:
        if not frames:
            info = probe(path)
            return np.zeros((0, info.height, info.width, 3), np.uint8)
        return np.stack([frames[i] for i in sorted(frames)])
    return _pick(frames, wanted, path)


def _decoded_from(path: Path, first: int, lookup: set[int] | None, last: int | None,
                  at_least: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """`_decoded_frames` of the file from frame `first` (which `lookup` holds, if given) on: from the keyframe before
    it, or from the start where seeking lands past it (an MPEG-TS file seeks to the next keyframe)."""
    for seek in dict.fromkeys((first > 0, False)):
        try:
            with av.open(str(path)) as container:
                stream = video_stream(container, path)
                stream.thread_type = "AUTO"
                timeline = file_timeline(path, stream)
                if seek:  # interlaced: from before the frame before, which the deinterlacer weaves `first` with
                    start = first - 1 if _coded_interlaced(stream.codec_context) else first
                    timeline.seek_near(container, stream, start)
                frames = _decoded_frames(container, stream, lookup, last, timeline, at_least)
                head = next(frames, None)
                if seek and (head is None or head[0] > first):
                    continue  # landed past the wanted frame (or the end)
                if head is not None:
                    yield head
                    yield from frames
                return
        except av.error.FFmpegError as exc:
            raise EpisodeError(path, f"cannot decode video ({_reason(exc)})") from exc


def read_frame_chunks(path: str | os.PathLike, indices: Sequence[int], chunk: int, decord: bool | None = None,
                      at_least: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """`read_frames(path, indices)` as consecutive arrays of at most `chunk` frames, from one opening of the file
    and, where `indices` ascend (as stored frames do), one forward pass of the decoder: memory stays bounded by
    `chunk` without reopening the video and decoding again from a keyframe for every chunk.

    `at_least` (height, width): the size the caller fits frames to, where it resizes them anyway. HDR frames read
    in ascending order are then shrunk before they are tone-mapped, to the smallest size still covering it (a 16:9
    4K frame has 32 times the pixels of one covering Motus's 384x320). Other frames come at full size."""
    path = Path(path)
    wanted = [int(i) for i in indices]
    if all(later >= earlier for earlier, later in zip(wanted, wanted[1:])):
        # PyAV decodes only when the next chunk is asked for. A decord reader held open between chunks decodes the
        # rest of the video ahead into memory while the caller works on a chunk (dmlc/decord#157, #208): the whole
        # of a long video, gigabytes, in every worker.
        if wanted:
            yield from _pyav_chunks(path, wanted, chunk, at_least)
        return
    parts = [wanted[start : start + chunk] for start in range(0, len(wanted), chunk)]
    if decord is None:
        decord = probe(path).decord
    if decord and (reader := _decord_reader(path)) is not None:
        _check_indices(path, wanted, len(reader))
        for part in parts:
            yield _decord_batch(reader, path, part)
    else:
        for part in parts:
            yield _read_with_pyav(path, part)


def _decord_reader(path: Path):
    """A decord reader of the file, or None where decord cannot open it (PyAV decodes those)."""
    try:
        return _open_decord(path)
    except Exception:  # noqa: BLE001 - decord raises its own error types for streams it does not handle
        return None


def _decord_batch(reader, path: Path, part: list[int]) -> np.ndarray:
    try:
        return reader.get_batch(part).asnumpy()
    except Exception:  # noqa: BLE001 - a stream decord opens but fails on: PyAV decodes it
        return _read_with_pyav(path, part)


def _pyav_chunks(path: Path, wanted: list[int], chunk: int, at_least: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Frames at the ascending `wanted` indices in arrays of `chunk`, decoded in one pass."""
    batch: list[np.ndarray] = []
    position = 0  # next entry of `wanted` to fill
    decoded = _decoded_from(path, wanted[0], set(wanted), wanted[-1], at_least)
    try:
        for index, rgb in decoded:
            if index > wanted[position]:
                break  # the wanted frame was not in the stream
            while position < len(wanted) and wanted[position] == index:
                batch.append(rgb)
                position += 1
                if len(batch) == chunk:
                    yield np.stack(batch)
                    batch = []
            if position == len(wanted):
                break
    finally:
        decoded.close()  # the file is closed when the caller stops early, not when the generator is collected
    if position < len(wanted):
        raise EpisodeError(path, f"frame {wanted[position]} is past the end of the video ({position} decoded)")
    if batch:
        yield np.stack(batch)


class ConstantRateTimeline:
    """Frame numbers from timestamps at the stream's constant rate: what a build's own clips have, and what a file
    whose header says its frames are evenly spaced has."""

    def __init__(self, stream):
        self.fps = float(stream.average_rate or stream.guessed_rate)
        self.start, self.time_base = stream.start_time or 0, stream.time_base

    def index(self, pts: int) -> int:
        return int(round(float((pts - self.start) * self.time_base) * self.fps))

    def seek_near(self, container, stream, first: int) -> None:
        """Jump to the keyframe at or before frame `first` instead of decoding from the start."""
        if first > 0:
            container.seek(int(first / self.fps / self.time_base), stream=stream, backward=True)


class PacketTimeline:
    """Frame i is the i-th frame in display order, as decord numbers frames and `probe` counts them, whatever their
    spacing: one pass over the packets (no decoding, in an opening of its own) lists every frame's timestamp."""

    def __init__(self, source: Path | bytes, stream):
        self.pts, _, _ = _display_timestamps(source)
        # packets without timestamps (some raw streams): only the rate can number frames
        self.by_rate = None if len(self.pts) else ConstantRateTimeline(stream)

    def index(self, pts: int) -> int:
        """The frame number of a timestamp (a timestamp between two frames counts as the later one)."""
        return self.by_rate.index(pts) if self.by_rate else int(np.searchsorted(self.pts, pts))

    def seek_near(self, container, stream, first: int) -> None:
        if self.by_rate:
            self.by_rate.seek_near(container, stream, first)
        elif 0 < first < len(self.pts):
            container.seek(int(self.pts[first]), stream=stream, backward=True)


def _display_timestamps(source: Path | bytes) -> tuple[np.ndarray, Fraction, int]:
    """The distinct timestamps of the video's frames in display order, their time base, and how many frames carry a
    timestamp another frame has too (shown as one frame), from its packets (no decoding), of
    a file or of a clip's bytes. A file's are listed once while it is unchanged: its frame times, then every read of it
    (each chunk of an unordered read, a retry from the start), would each demux the whole file again."""
    if not isinstance(source, (str, os.PathLike)):
        return _listed_timestamps(io.BytesIO(source), "clip")
    return _file_timestamps(str(source), file_version(source))


@functools.lru_cache(maxsize=8)
def _file_timestamps(path: str, version: tuple[int, int, int]) -> tuple[np.ndarray, Fraction, int]:
    """`_listed_timestamps` of a file, kept by its inode, size and modification time too: a file written anew, in
    place or renamed over it, is listed anew."""
    return _listed_timestamps(path, Path(path))


def _listed_timestamps(source, origin) -> tuple[np.ndarray, Fraction, int]:
    with av.open(source) as container:
        stream = video_stream(container, origin)
        listed = [packet.pts for packet in container.demux(stream) if _shows_a_frame(packet) and packet.pts is not None]
        pts = np.unique(listed).astype(np.int64)
        pts.flags.writeable = False  # shared by every reader of the file
        return pts, stream.time_base, len(listed) - len(pts)


def frame_times(path: str | os.PathLike) -> np.ndarray:
    """Seconds from the first frame at which each frame is shown, in display order (empty where packets carry no
    timestamps)."""
    pts, time_base, _ = _timestamps_of_file(path)
    return (pts - pts[:1]).astype(np.float64) * float(time_base) if len(pts) else np.zeros(0)


def repeated_timestamps(path: str | os.PathLike) -> int:
    """How many frames of the video carry a timestamp an earlier frame has (a recorder's slip; Matroska allows it):
    `frame_times` lists the time once, and frames are numbered by time, so each such frame is left out."""
    return _timestamps_of_file(path)[2]


def _timestamps_of_file(path: str | os.PathLike) -> tuple[np.ndarray, Fraction, int]:
    """`_display_timestamps` of a file; an EpisodeError naming it where it does not open."""
    try:
        return _display_timestamps(Path(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise EpisodeError(path, f"cannot open video ({_reason(exc)})") from exc


def frames_at_constant_rate(times: np.ndarray, fps: float) -> np.ndarray:
    """The frame shown at each tick of a clock at `fps` from the first frame, for frames shown at `times` (seconds,
    ascending): a variable-frame-rate recording as evenly spaced frames, repeating a frame across a gap and leaving
    out frames that come faster than the clock. A frame counts from half a tick before its timestamp, so evenly
    spaced frames with jitter map onto themselves."""
    ticks = int(np.floor(times[-1] * fps + 0.5)) + 1
    return np.searchsorted(times, (np.arange(ticks) + 0.5) / fps, side="right") - 1


def file_timeline(source: Path | bytes, stream) -> ConstantRateTimeline | PacketTimeline:
    """How to number the frames of the video file (or clip's bytes) `stream` is opened from. The timestamps of a
    variable-frame-rate file (a phone recording, a webm with dropped frames) are not multiples of 1/fps, and frame
    numbers computed from them would miss or repeat frames: those files are numbered from their packets. A file whose
    header shows evenly spaced frames keeps the arithmetic: listing the packets of a LeRobot v3 file (hundreds of
    episodes in one mp4) for each episode would cost more than decoding it."""
    return ConstantRateTimeline(stream) if _constant_rate(stream) else PacketTimeline(source, stream)


def _constant_rate(stream) -> bool:
    """The header's average rate is exactly its base rate, and its frame count fills its duration at that rate. Exactly:
    one frame dropped from a long recording moves the average rate by less than a thousandth, and numbering the
    frames after it from their timestamps would be off by one."""
    excess = _frames_beyond_duration(stream)  # None for webm and mkv: only their packets tell
    return excess is not None and stream.average_rate == stream.guessed_rate and abs(excess) <= 1


def read_clip(data: bytes, indices: Sequence[int], origin: str | os.PathLike) -> np.ndarray:
    """The frames at `indices` of a short in-memory clip as a build stores it (one H.264 mp4 per clip).

    Made for a trainer's loader, which opens a new clip for every example: the container is opened
    without decoding a frame to probe it (mp4 keeps the size and codec in its header), and decoding
    runs on one thread, as loader workers already run one per core. A clip whose header does not show
    evenly spaced frames (not one a build writes) is numbered from its packets, as a file is.
    """
    wanted = [int(i) for i in indices]
    try:
        with av.open(io.BytesIO(data), stream_options=[{"skip_frame": "all"}]) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            frames = _decode(container, stream, wanted, file_timeline(data, stream))
    except (av.error.FFmpegError, IndexError) as exc:
        raise EpisodeError(origin, f"cannot decode the clip video ({exc.__class__.__name__}: {exc})") from exc
    return _pick(frames, wanted, origin)


# One converter per thread: it keeps its swscale context between frames of one size, where a frame's
# own `to_ndarray` sets one up per call (about a fifth of a short clip's decode time). Not shared
# across threads: it scales without the GIL.
_converters = threading.local()


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None,
            at_least: tuple[int, int] | None = None) -> np.ndarray:
    """The frame as uint8 RGB, scaled to `size` (width, height, before any turn) where it differs (non-square pixels; a
    browser or video call recording that changes resolution mid-stream, which a player scales to one size), tone-mapped
    to SDR where it is HDR (shrunk first to cover `at_least`, see `read_frame_chunks`), turned upright as its display
    matrix says."""
    if not hasattr(_converters, "rgb"):
        _converters.rgb = VideoReformatter()
    hdr, turns = is_hdr(frame.color_trc), _quarter_turns(frame.rotation)
    if hdr and at_least:
        size = _covering(size or (frame.width, frame.height), at_least, turned=turns % 2 == 1)
    pixels = "rgb48le" if hdr else "rgb24"
    if size and size != (frame.width, frame.height):
        width, height = size
        shrinks = width * height < frame.width * frame.height
        rgb = _converters.rgb.reformat(frame, format=pixels, width=width, height=height,
                                       interpolation="AREA" if shrinks else "BILINEAR").to_ndarray()
    else:
        rgb = _converters.rgb.reformat(frame, format=pixels, interpolation="POINT").to_ndarray()
    if hdr:
        rgb = to_sdr(rgb, frame.color_trc)
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _covering(size: tuple[int, int], at_least: tuple[int, int], turned: bool) -> tuple[int, int]:
    """`size` (width, height, before a turn) scaled down, keeping its aspect ratio, to the smallest that still covers
    `at_least` (height, width, as shown) once turned; `size` where it is no larger."""
    least_height, least_width = at_least[::-1] if turned else at_least
    width, height = size
    scale = max(least_width / width, least_height / height)
    if scale >= 1:
        return size
    return max(least_width, math.ceil(width * scale)), max(least_height, math.ceil(height * scale))


def _stored_size(stream) -> tuple[int, int] | None:
    """(width, height) every frame is read at, before it is turned: the stream's, at its shown width; None where the
    header gives no size (each frame keeps its own)."""
    return ((_shown_width(stream) or stream.width), stream.height) if stream.width and stream.height else None


def _decode(container, stream, wanted: list[int] | None, timeline) -> dict[int, np.ndarray]:
    """RGB frames by index, from the container's position up to the last wanted frame."""
    lookup, last = (None, None) if wanted is None else (set(wanted), max(wanted))
    return dict(_decoded_frames(container, stream, lookup, last, timeline))


def _decoded_frames(container, stream, lookup: set[int] | None, last: int | None,
                    timeline, at_least: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB frame) in display order, from the container's position up to frame `last`, of the frames in
    `lookup` (all when None).

    In H.264 a frame nobody wants and nothing refers to (x264's non-reference B-frames) is not
    decoded. Not in AV1, whose packets can carry a hidden reference frame shown by a later one.
    """
    codec, size, deinterlace = stream.codec_context, _stored_size(stream), Deinterlacer(stream)
    # not where frames are interlaced: their neighbours in time are what the deinterlacer weaves a frame from
    skip_unwanted = lookup is not None and codec.name == "h264" and not _coded_interlaced(codec)
    previous = None
    for packet in container.demux(stream):
        if skip_unwanted and packet.pts is not None:
            codec.skip_frame = "DEFAULT" if timeline.index(packet.pts) in lookup else "NONREF"
        for frame in deinterlace(packet.decode(), end=packet.size == 0):
            if deinterlace.active and skip_unwanted:  # interlaced frames the header did not announce
                skip_unwanted, codec.skip_frame = False, "DEFAULT"
            if frame.pts is None:
                raise av.error.InvalidDataError(0, "frame without timestamp")
            index = timeline.index(frame.pts)
            if index == previous:
                continue  # stamped with the time of the frame before it: the timeline has one frame there, the first
            previous = index
            if lookup is None or index in lookup:
                yield index, _to_rgb(frame, size, at_least)
            if last is not None and index >= last:
                return


def _coded_interlaced(codec) -> bool:
    """Whether the stream's header says its frames are interlaced (its field order is neither unknown nor
    progressive)."""
    return codec.field_order not in FIELD_ORDERS_PROGRESSIVE


class Deinterlacer:
    """Interlaced frames (a camcorder's AVCHD or DV, broadcast video: the two fields of a frame recorded 1/50 or 1/60 s
    apart) as a player shows them: deinterlaced by FFmpeg's bwdif, one frame per frame, where read as stored every
    moving edge would be combed and its flow torn. Frames pass through untouched until one is flagged interlaced;
    from then on all go through the filter, which holds one frame back to look ahead in time."""

    def __init__(self, stream):
        self.stream, self.graph = stream, None

    @property
    def active(self) -> bool:
        return self.graph is not None

    def __call__(self, frames, end: bool = False) -> Iterator[av.VideoFrame]:
        for frame in frames:
            if self.graph is None and not frame.interlaced_frame:
                yield frame
                continue
            if self.graph is None:
                self.graph = self._bwdif()
            self.graph.push(frame)
            yield from self._ready()
        if end and self.graph is not None:
            self.graph.push(None)
            yield from self._ready()

    def _bwdif(self):
        graph = av.filter.Graph()
        graph.link_nodes(graph.add_buffer(template=self.stream),
                         graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced"),
                         graph.add("buffersink")).configure()
        return graph

    def _ready(self) -> Iterator[av.VideoFrame]:
        while True:
            try:
                frame = self.graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            # bwdif counts time in half the stream's time base (it can output a frame per field): back to the stream's
            time_base = self.stream.time_base
            frame.pts, frame.time_base = round(frame.pts * frame.time_base / time_base), time_base
            yield frame


def _pick(frames: dict[int, np.ndarray], wanted: list[int], origin) -> np.ndarray:
    missing = [i for i in wanted if i not in frames]
    if missing:
        raise EpisodeError(origin, f"frame {missing[0]} is past the end of the video ({len(frames)} decoded)")
    return np.stack([frames[i] for i in wanted])


def _reason(exc: Exception) -> str:
    """The error without the file name PyAV appends (EpisodeError names the file already)."""
    return getattr(exc, "strerror", None) or exc.__class__.__name__




def _check_indices(path: Path, indices: list[int], total: int) -> None:
    bad = [i for i in indices if i < 0 or i >= total]
    if bad:
        # past the end: a header promising more frames than the file holds (cut short)
        where = "is past the end of the video" if bad[0] >= total else "is out of range"
        raise EpisodeError(path, f"frame {bad[0]} {where} ({total} frames)")


@dataclass
class FrameChunks:
    """Frames [length, H, W, 3] made chunk by chunk while they are encoded, so that a long run of them is never held
    whole; `make()` yields the chunks (uint8 RGB arrays) afresh each time it is called."""

    length: int
    frame_shape: tuple[int, int, int]  # (H, W, 3) of every frame
    make: Callable[[], Iterator[np.ndarray]]

    def __len__(self) -> int:
        return self.length

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.length, *self.frame_shape)

    def chunks(self) -> Iterator[np.ndarray]:
        made = 0
        if not self.length:
            return
        for chunk in self.make():
            if chunk.shape[1:] != self.frame_shape:
                raise ValueError(f"expected frames of shape {list(self.frame_shape)}, got {list(chunk.shape[1:])}")
            chunk = chunk[: self.length - made]
            made += len(chunk)
            yield chunk
            if made == self.length:
                return
        raise ValueError(f"expected {self.length} frames, {made} were made")


Frames = np.ndarray | FrameChunks  # what the encoders take


def chunks_of(frames: Frames) -> Iterator[np.ndarray]:
    return frames.chunks() if isinstance(frames, FrameChunks) else iter((frames,))


def write_video(
    path: str | os.PathLike,
    frames: Frames,
    fps: float,
    codec: str = "libx264",
    crf: int = 20,
    gop: int | None = None,
) -> Path:
    """Encode uint8 RGB [N, H, W, 3] frames to `path` (yuv420p), writing to a temp name first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: _encode(str(tmp), _container_format(path), frames, fps, codec, crf, gop))
    return path


def video_bytes(frames: Frames, fps: float, codec: str = "libx264", crf: int = 20, suffix: str = ".mp4") -> bytes:
    """`write_video`'s file as bytes, encoded in memory (a build encodes every clip: no temporary files)."""
    buffer = io.BytesIO()
    _encode(buffer, _container_format(Path(suffix)), frames, fps, codec, crf, None)
    return buffer.getvalue()


def _encode(target, container_format: str, frames: Frames, fps: float, codec: str, crf: int, gop: int | None) -> None:
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(target, mode="w", format=container_format) as container:
        stream, index = None, 0
        try:
            for chunk in chunks_of(frames):
                if stream is None:  # sized by the first chunk
                    height, width = chunk.shape[1:3]
                    stream = container.add_stream(codec, rate=rate)
                    stream.width, stream.height = width + width % 2, height + height % 2
                    stream.pix_fmt = "yuv420p"
                    stream.options = encoder_options(codec, crf, gop)
                    stream.thread_count = 1  # builds parallelise across episodes, not within one clip
                for frame in chunk:
                    if frame.shape[0] % 2 or frame.shape[1] % 2:
                        frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
                    for packet in stream.encode(_yuv420p_frame(frame, index)):
                        container.mux(packet)
                    index += 1
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
        except BaseException:
            drain_encoder(stream)
            raise


def drain_encoder(stream) -> None:
    """End an encoder that will not finish (its frames failed, or Ctrl-C): SVT-AV1 torn down without its end of
    stream prints an error line of its own on stderr beside the one that names the failure."""
    if stream is None:
        return
    try:
        for _ in stream.encode():
            pass
    except Exception:  # noqa: BLE001 - the failure that stopped the encoding is the one to report
        pass


def _yuv420p_frame(rgb: np.ndarray, index: int) -> av.VideoFrame:
    """RGB -> BT.601 limited-range yuv420p (FFmpeg's default for untagged video) by OpenCV, with its pts."""
    import cv2

    height, width = rgb.shape[:2]
    planes = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
    frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
    frame.pts = index
    return frame


def _container_format(path: Path) -> str:
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}.get(path.suffix.lower(), "mp4")


def encoder_options(codec: str, crf: int, gop: int | None) -> dict[str, str]:
    """FFmpeg options of every encoder this project opens: the same frames give the same bytes."""
    options = {"crf": str(crf)}
    if codec == "libsvtav1":
        options = {"crf": str(crf), "preset": "12"}
    elif codec == "libx264":
        # mbtree off: x264's macroblock-tree rate control read uninitialised memory here (the output
        # changed with whatever the process had freed before, one x264 export in ten after an aborted encoder),
        # and rebuilt shards and exports must be identical.
        options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
    elif codec == "libvpx-vp9":
        options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8"}
    if gop:
        options["g"] = str(gop)
    return options
