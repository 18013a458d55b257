"""Plain videos: a hostile camera dump (cut, empty, absurd-rate and non-video files, symlinks) is sorted
into clips that decode and one-line reasons, and discovery never stops."""

from __future__ import annotations

import pytest

from pyramid.errors import EpisodeError
from pyramid.sources import get_source
from pyramid.video_io import probe, write_video
from tests.fixtures import videos as fixture
from tests.fixtures.media import moving_square_frames
from tests.hostile import check_hostile_corpus


def test_hostile_camera_dump(tmp_path):
    spec = check_hostile_corpus("videos", tmp_path / "dump", fixture.build_hostile(tmp_path / "dump"))
    assert {bad.fault for bad in spec.bad} >= {"truncated", "empty", "implausible_fps", "symlink_loop", "symlink_out"}


def test_the_caption_beside_a_clip_is_its_instruction(tmp_path):
    fixture.build_hostile(tmp_path)
    reader = get_source("videos")(tmp_path)
    episode = reader.load(reader.ref("kitchen/2024-05-01/cam0/clip_0001.mp4"))
    assert episode.instructions == ["wipe the counter"] and episode.fps == pytest.approx(30.0)


def test_a_truncated_faststart_mp4_probes_whole_and_fails_only_on_decoding(tmp_path):
    path = fixture.write_truncated_faststart(tmp_path / "cut.mp4", moving_square_frames(8, 64, 96))
    assert probe(path).num_frames == 8
    with pytest.raises(EpisodeError, match="cannot decode video"):
        get_source("videos")(tmp_path).load(get_source("videos")(tmp_path).ref("cut.mp4")).frames()


def test_links_out_of_the_root_are_read_when_allowed(tmp_path):
    fixture.build_hostile(tmp_path / "dump")
    reader = get_source("videos")(tmp_path / "dump", follow_symlinks=True)
    refs = {ref.relpath: ref for ref in reader.discover()}
    assert reader.load(refs["kitchen/2024-05-03/cam0/clip_0001.mp4"]).num_frames == 8
    assert refs["kitchen/2024-05-01/cam2"].error and "symlink loop" in refs["kitchen/2024-05-01/cam2"].error


def test_a_name_with_a_superscript_digit_sorts_without_stopping_discovery(tmp_path):
    frames = moving_square_frames(6, 48, 64)
    for name in ["clip_10.mp4", "clip_2.mp4", "clip²_1.mp4"]:  # '²'.isdigit() is True, int('²') raises
        write_video(tmp_path / name, frames, fps=30.0)
    relpaths = [ref.relpath for ref in get_source("videos")(tmp_path).discover()]
    assert relpaths == ["clip_2.mp4", "clip_10.mp4", "clip²_1.mp4"]


def test_a_phone_portrait_clip_is_read_upright(tmp_path):
    """A phone stores its sensor's landscape frames and a display matrix; flow on the sideways frames would turn
    every motion by 90 degrees against the rest of the data."""
    import numpy as np

    shown = moving_square_frames(8, 96, 64)
    fixture.write_portrait_clip(tmp_path / "phone/portrait.mp4", shown)
    reader = get_source("videos")(tmp_path)
    camera = reader.load(reader.ref("phone/portrait.mp4")).cameras["video"]
    assert (camera.height, camera.width) == (96, 64)
    frames = camera.frames()
    assert frames.shape == shown.shape and np.abs(frames.astype(int) - shown).mean() < 6


def test_a_variable_frame_rate_recording_is_read_at_even_times(tmp_path):
    """A phone that slows to 15 fps in low light: its frames numbered as if evenly spaced put the frames a build takes
    at 10 fps up to 0.2 s from the times they stand for, and the flow between them spans uneven times."""
    from fractions import Fraction

    import numpy as np

    from pyramid.clips import stored_frames_of

    pts = [*range(0, 600, 20), *range(600, 1200, 40), *range(1200, 1800, 20)]  # in 1/600 s, as an iPhone writes
    shown_at = np.array(pts) / 600
    frames = np.stack([np.full((64, 96, 3), 10 + 3 * i, np.uint8) for i in range(len(pts))])  # each shows its number
    fixture.write_variable_rate(tmp_path / "phone/low_light.mov", frames, pts, Fraction(1, 600))
    fixture.build(tmp_path)
    reader = get_source("videos")(tmp_path)
    episode = reader.load(reader.ref("phone/low_light.mov"))
    assert episode.fps == pytest.approx(30.0) and episode.num_frames == 90  # the rate it mostly runs at, over 3 s
    rate, indices = stored_frames_of(episode.num_frames, episode.fps, 10.0)
    decoded = episode.cameras["video"].frames(indices)  # through decord; a build's chunks through PyAV, in one pass
    assert np.array_equal(np.concatenate(list(episode.cameras["video"].frame_chunks(indices, 7))), decoded)
    numbers = np.rint((decoded.mean(axis=(1, 2, 3)) - 10) / 3).astype(int)
    late = shown_at[numbers] - np.arange(len(indices)) / rate
    at_full_rate = np.r_[0:10, 20:30]  # where the phone kept 30 fps a frame was shown at each stored time
    assert len(indices) == 30 and np.abs(late).max() <= 1 / 30 + 1e-9 and not late[at_full_rate].any(), np.round(late, 3)
    evenly_spaced = reader.load(reader.ref("kitchen/clip_h264.mp4")).cameras["video"]
    assert evenly_spaced.file_frames is None and evenly_spaced.num_frames == 12


def test_two_frames_stamped_with_one_time_are_read_as_the_one_shown(tmp_path):
    """A recorder that stamps two frames with one time (Matroska allows it): the packets count both, the timestamps
    one. Numbered by their times, every path reads the same frames, the second of the two left out; the file's
    packet count used to be kept, so the last frame was "past the end" and the episode quarantined."""
    from fractions import Fraction

    import numpy as np

    pts = [*range(0, 500, 100), 400, *range(500, 1900, 100)]  # in 1/1000 s: frame 5 has frame 4's time
    frames = np.stack([np.full((64, 96, 3), 10 + 10 * i, np.uint8) for i in range(len(pts))])  # each shows its number
    fixture.write_variable_rate(tmp_path / "rec/stamped_twice.mkv", frames, pts, Fraction(1, 1000))
    reader = get_source("videos")(tmp_path)
    camera = reader.load(reader.ref("rec/stamped_twice.mkv")).cameras["video"]
    assert camera.num_frames == 19 and camera.fps == pytest.approx(10.0)
    decoded = camera.frames()
    assert np.rint((decoded.mean(axis=(1, 2, 3)) - 10) / 10).astype(int).tolist() == [*range(5), *range(6, 20)]
    assert np.array_equal(np.concatenate(list(camera.frame_chunks(range(19), 7))), decoded)


def test_a_clip_cut_without_re_encoding_starts_at_its_cut(tmp_path):
    """`ffmpeg -ss T -i in.mp4 -c copy` keeps the frames from the keyframe before T and an edit list hiding them: its
    header counts them, decord shows them, and numbering them put every frame a build took up to a GOP early."""
    import numpy as np

    from pyramid.clips import stored_frames_of
    from pyramid.video_io import read_frames

    # each frame shows its number: tens in red, units in green, 20 levels apart to outlast the compression
    source = np.stack([np.full((64, 96, 3), (20 + 20 * (i // 10), 20 + 20 * (i % 10), 0), np.uint8) for i in range(90)])
    path = fixture.write_stream_copy_cut(tmp_path / "takes/2024-05-01/cam0/take_0003.mp4", source, first=45, gop=30)
    reader = get_source("videos")(tmp_path)
    episode = reader.load(reader.ref("takes/2024-05-01/cam0/take_0003.mp4"))
    assert episode.fps == pytest.approx(30.0) and episode.num_frames == 45, (episode.fps, episode.num_frames)

    def numbers(frames):
        tens, units = np.rint((frames.mean(axis=(1, 2))[:, :2] - 20) / 20).astype(int).T
        return (10 * tens + units).tolist()

    rate, indices = stored_frames_of(episode.num_frames, episode.fps, 10.0)
    camera = episode.cameras["video"]
    assert numbers(camera.frames(indices)) == list(range(45, 90, 3))
    assert numbers(np.concatenate(list(camera.frame_chunks(indices, 7)))) == list(range(45, 90, 3))
    assert numbers(read_frames(path)) == list(range(45, 90))
    assert numbers(camera.frames([40, 44])) == [85, 89]  # after a seek, into the cut's last GOP


def test_a_clip_trimmed_at_its_end_without_re_encoding_ends_at_its_trim(tmp_path):
    """A trim that does not re-encode can cut the end with an edit list, the frames after it left in the file: the
    header counted them, decord showed them, and a build quarantined the clip at "frame 51 is past the end"."""
    import numpy as np

    from pyramid.video_io import read_frames

    source = np.stack([np.full((64, 96, 3), (20 + 20 * (i // 10), 20 + 20 * (i % 10), 0), np.uint8) for i in range(60)])
    path = fixture.write_end_trimmed(tmp_path / "phone/2024-05-06/IMG_0433.MOV", source, hidden=10)
    info = probe(path)
    assert (info.num_frames, info.fps, info.decord) == (50, 30.0, False), info
    reader = get_source("videos")(tmp_path)
    camera = reader.load(reader.ref("phone/2024-05-06/IMG_0433.MOV")).cameras["video"]
    assert camera.num_frames == 50
    decoded = np.concatenate(list(camera.frame_chunks(range(0, 50, 3), 5)))
    assert np.abs(decoded.astype(int) - source[0:50:3]).mean() < 3
    assert len(read_frames(path)) == 50


@pytest.mark.parametrize("transfer, relpath", [("hlg", "phone/2024-05-04/IMG_0421.MOV"),  # an iPhone's default
                                               ("pq", "phone/2024-05-04/VID_20240504_101500.mp4")])  # HDR10, Android
def test_hdr_video_is_read_as_the_sdr_picture_a_player_shows(tmp_path, transfer, relpath):
    """Read as if it were SDR, an iPhone's HLG video is dim and washed out: white 235 came out 182, a red 235,16,16 as
    172,62,31 (34 levels off on average). Colour bars and a grey ramp, recorded as BT.2408 places SDR in HDR."""
    import numpy as np

    from pyramid.clips import stored_frames_of

    picture = np.zeros((64, 192, 3), np.uint8)
    for bar, colour in enumerate([(235, 235, 235), (235, 235, 16), (16, 235, 235), (16, 235, 16),
                                  (235, 16, 235), (235, 16, 16), (16, 16, 235), (16, 16, 16)]):
        picture[:32, bar * 24 : (bar + 1) * 24] = colour
    picture[32:] = np.linspace(0, 230, 192).astype(np.uint8)[None, :, None]
    frames = np.stack([np.roll(picture, shift, axis=1) for shift in range(0, 24, 2)])
    fixture.write_10bit_hevc(tmp_path / relpath, frames, transfer)
    reader = get_source("videos")(tmp_path)
    episode = reader.load(reader.ref(relpath))
    _, indices = stored_frames_of(episode.num_frames, episode.fps, 10.0)
    camera = episode.cameras["video"]
    for decoded in (camera.frames(indices), np.concatenate(list(camera.frame_chunks(indices, 2)))):
        error = np.abs(decoded.astype(int) - frames[indices])[:, 4:-4, 4:-4]  # away from the chroma edges at the rim
        assert error.mean() < 4 and np.median(error) <= 1, (error.mean(), np.median(error))  # as SDR: 33 and 28 (HLG)
        white, red = decoded[0, 16, 12].astype(int), decoded[0, 16, 5 * 24 + 12].astype(int)
        assert np.abs(white - 235).max() <= 3 and abs(red[0] - 235) <= 3 and red[1:].max() < 30, (white, red)


def test_hdr_video_is_tone_mapped_at_the_size_a_build_keeps(tmp_path):
    """Tone mapping works pixel by pixel: a build keeping 384x320 of a phone's 4K HLG video had it tone-mapped at 4K
    first, 32 times the pixels. Shrunk first to cover the size kept, it ends up as the full-size read resized."""
    import numpy as np

    from pyramid.clips import decode_stored
    from pyramid.resize import resize_frames

    frames = moving_square_frames(6, 96, 256)
    for transfer in ("hlg", "sdr"):
        fixture.write_10bit_hevc(tmp_path / f"phone/{transfer}.mov", frames, transfer)
    reader = get_source("videos")(tmp_path)
    episode = reader.load(reader.ref("phone/hlg.mov"))
    camera, indices = episode.cameras["video"], list(range(6))
    full = camera.frames(indices)
    shrunk = np.concatenate(list(camera.frame_chunks(indices, 4, at_least=(24, 48))))
    assert shrunk.shape == (6, 24, 64, 3)  # the smallest 96:256 size covering 24x48
    # averaged before tone mapping, not after, the square's edges differ by a few levels; read as SDR, 18 on average
    assert np.abs(shrunk.astype(int) - resize_frames(full, (24, 64))).mean() < 5
    stored = decode_stored(episode, np.array(indices), (24, 48))
    assert np.abs(stored.astype(int) - resize_frames(full, (24, 48))).mean() < 5
    sdr = reader.load(reader.ref("phone/sdr.mov")).cameras["video"]
    assert next(sdr.frame_chunks(indices, 4, at_least=(24, 48))).shape == (4, 96, 256, 3)  # SDR: as it always was


def test_a_covering_size_is_taken_as_the_frame_is_shown():
    from pyramid.video_io import _covering

    assert _covering((3840, 2160), (384, 320), turned=False) == (683, 384)  # landscape 4K for a 384x320 build
    assert _covering((3840, 2160), (384, 320), turned=True) == (569, 320)  # a portrait phone's stored frame
    assert _covering((640, 480), (384, 320), turned=False) == (512, 384)
    assert _covering((320, 240), (384, 320), turned=False) == (320, 240)  # never grown
    assert _covering((640, 480), (240, 320), turned=False) == (320, 240)


def test_a_recording_that_changes_resolution_is_read_at_one_size(tmp_path):
    """A browser's MediaRecorder halves the resolution when the bandwidth drops; a player scales it back. Reading it
    stopped on frames of two sizes (a ValueError from numpy, not a reason)."""
    import cv2
    import numpy as np

    large = moving_square_frames(8, 96, 128)
    small = moving_square_frames(8, 48, 64, seed=1)
    fixture.write_resolution_change(tmp_path / "calls/2024-05-05/recording-1714900000000.webm", [large, small])
    reader = get_source("videos")(tmp_path)
    camera = reader.load(reader.ref("calls/2024-05-05/recording-1714900000000.webm")).cameras["video"]
    assert (camera.num_frames, camera.height, camera.width) == (16, 96, 128)
    frames = camera.frames()
    assert np.array_equal(np.concatenate(list(camera.frame_chunks(range(16), 5))), frames)
    assert np.abs(frames[:8].astype(int) - large).mean() < 8  # VP9 at its fastest setting
    shown_large = np.stack([cv2.resize(image, (128, 96), interpolation=cv2.INTER_LINEAR) for image in small])
    assert np.abs(frames[8:].astype(int) - shown_large).mean() < 10


def test_a_thumbnail_track_before_the_video_is_passed_over(tmp_path):
    """A still image listed as the first video track: probing it counted one 64x48 frame at 1 fps while decord decoded
    the recording, and PyAV's reads decoded the thumbnail."""
    import numpy as np

    frames = moving_square_frames(12, 64, 96)
    fixture.write_thumbnail_track_first(tmp_path / "lab/session_03/take_2.mkv", frames)
    info = probe(tmp_path / "lab/session_03/take_2.mkv")
    assert (info.num_frames, info.fps, info.height, info.width, info.codec) == (12, 30.0, 64, 96, "h264")
    reader = get_source("videos")(tmp_path)
    camera = reader.load(reader.ref("lab/session_03/take_2.mkv")).cameras["video"]
    decoded = camera.frames()
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).mean() < 3
    assert np.array_equal(np.concatenate(list(camera.frame_chunks([3, 7, 11], 2))), decoded[[3, 7, 11]])


def test_an_interlaced_camcorder_recording_is_deinterlaced(tmp_path):
    """A 1080i camcorder records a frame's two fields 1/60 s apart: read as stored, every moving edge is combed (lines
    alternating between two positions), and flow between such frames is torn."""
    import numpy as np

    from tests.fixtures.videos import interlaced_frames, write_camcorder_video

    def combing(frames):  # how far each line lies from the mean of the lines above and below it
        grey = frames.astype(float).mean(axis=3)
        return np.abs(grey[:, 1:-1] - (grey[:, :-2] + grey[:, 2:]) / 2).mean()

    fields = np.full((24, 96, 128, 3), 60, np.uint8)  # a square crossing a plain wall, 4 px per field
    for field in range(24):
        fields[field, 24:72, 8 + 4 * field : 56 + 4 * field] = (230, 200, 40)
    stored = interlaced_frames(fields)
    reader = get_source("videos")(tmp_path)
    for relpath in ["camcorder/PRIVATE/AVCHD/BDMV/STREAM/00001.MTS", "camcorder/exports/00001.mp4"]:
        write_camcorder_video(tmp_path / relpath, stored, interlaced=True, gop=4)
        camera = reader.load(reader.ref(relpath)).cameras["video"]
        frames = camera.frames()
        assert frames.shape == stored.shape
        assert combing(frames) < combing(stored) / 3, (relpath, combing(frames), combing(stored))
        # read from a keyframe (8), as a build's later parts are, it is woven with the frame before it all the same
        assert np.array_equal(np.concatenate(list(camera.frame_chunks(range(8, 12), 3))), frames[8:12]), relpath
        assert np.array_equal(camera.frames([8, 10]), frames[[8, 10]]), relpath
