"""The one atomic-write helper and the checkpoint convention both trainers share."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pyramid.atomic import atomic_directory, atomic_write, atomic_write_bytes
from pyramid.training.checkpoints import (checkpoint_to_resume, latest_checkpoint, prune_checkpoints, state_file,
                                 step_directory)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fails)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["data.bin"]


def dead_pid() -> int:
    """The pid of a process that has ended (a killed writer's)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "step_0000001"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_bytes(b"1")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    (tmp_path / f".step_0000001.tmp{dead_pid()}").mkdir()  # left by a killed writer
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_bytes(b"2")
        assert not target.exists()
    assert (target / "weights").read_bytes() == b"2" and os.listdir(tmp_path) == ["step_0000001"]


def test_a_replaced_directory_is_never_half_deleted_where_it_stood(tmp_path, monkeypatch):
    """The old version goes aside before the new one takes its place; a kill while deleting it (a large export:
    minutes) leaves the new version whole, and the next write removes what is left of the old."""
    target = tmp_path / "export"
    target.mkdir()
    for name in "abc":
        (target / name).write_text("old")
    delete = shutil.rmtree

    def killed_while_deleting(path, ignore_errors=False):
        if Path(path).is_dir() and (Path(path) / "a").exists():  # the old version
            (Path(path) / "a").unlink()
            raise KeyboardInterrupt
        delete(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "new").write_text("new")
    monkeypatch.setattr(shutil, "rmtree", delete)
    assert os.listdir(target) == ["new"]
    with atomic_directory(target) as tmp:
        (tmp / "newer").write_text("newer")
    assert os.listdir(tmp_path) == ["export"] and os.listdir(target) == ["newer"]


def test_a_live_writer_of_the_same_output_is_refused_and_a_sibling_output_untouched(tmp_path):
    """Two exports into one OUT: the second is refused, where it deleted the first one's temporary folder (which
    the first then finished as an empty dataset); `ds`'s writer leaves `ds.v1`'s temporary alone."""
    import subprocess
    import sys

    from pyramid.atomic import OutputBusy

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".ds.tmp{writer.pid}"
        theirs.mkdir()
        sibling = tmp_path / f".ds.tmp{dead_pid()}.v1"  # ds.v1's, killed: its own writer's to clear
        sibling.mkdir()
        with pytest.raises(OutputBusy, match=f"another process \\(pid {writer.pid}\\) is writing it"):
            with atomic_directory(tmp_path / "ds"):
                pass
        assert theirs.is_dir() and sibling.is_dir() and not (tmp_path / "ds").exists()
    finally:
        writer.kill()
        writer.wait()
    with atomic_directory(tmp_path / "ds") as tmp:  # its writer is gone now
        (tmp / "new").write_text("new")
    assert sorted(os.listdir(tmp_path)) == sorted(["ds", sibling.name])


def test_an_old_version_set_aside_by_a_killed_writer_is_restored(tmp_path):
    """Killed between its two renames: the old version aside, the new one under its temporary name, none in place."""
    target = tmp_path / "export"
    pid = dead_pid()
    (tmp_path / f".export.tmp{pid}-old").mkdir()
    (tmp_path / f".export.tmp{pid}-old" / "old").write_text("old")
    (tmp_path / f".export.tmp{pid}").mkdir()
    with pytest.raises(RuntimeError), atomic_directory(target):
        raise RuntimeError("this run fails too")
    assert os.listdir(tmp_path) == ["export"] and os.listdir(target) == ["old"]


def test_ctrl_c_between_the_renames_puts_the_old_version_back(tmp_path, monkeypatch):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old").write_text("old")
    rename = os.replace

    def interrupted_after_setting_aside(source, destination):
        rename(source, destination)
        if Path(source) == target:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_after_setting_aside)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "new").write_text("new")
    assert os.listdir(tmp_path) == ["export"] and os.listdir(target) == ["old"]


def test_a_directory_written_through_a_link_replaces_its_target_and_spares_other_temporaries(tmp_path):
    real, link = tmp_path / "export[1]", tmp_path / "link"
    real.mkdir()
    (real / "old").write_text("old")
    link.symlink_to(real, target_is_directory=True)
    other = tmp_path / ".export1.tmp4242"  # another output's temporary name, which the glob `.export[1].tmp*` would match
    other.mkdir()
    with atomic_directory(link) as tmp:
        (tmp / "new").write_text("new")
    assert link.is_symlink() and os.listdir(real) == ["new"] and other.is_dir()


def complete(folder, name, state="training_state.json"):
    (folder / name).mkdir(parents=True)
    (folder / name / state).write_text("{}")
    return folder / name


def test_checkpoints_are_found_by_step_whatever_the_width_and_only_when_complete(tmp_path):
    assert step_directory(tmp_path, 500) == tmp_path / "step_0000500"
    older = complete(tmp_path, "step_000900")  # pyramid train's width before the shared convention
    old_vae = complete(tmp_path, "step_0000100", "trainer_state.json")  # train-vae's old state file
    newest = complete(tmp_path, "step_0001000")
    (tmp_path / "step_0002000").mkdir()  # no state file: not a checkpoint
    (tmp_path / ".step_0003000.tmp99").mkdir()
    assert latest_checkpoint(tmp_path) == newest and state_file(old_vae).name == "trainer_state.json"
    prune_checkpoints(tmp_path, keep=2)
    assert not old_vae.exists() and older.exists() and newest.exists()


def test_an_output_with_checkpoints_needs_resume(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    assert checkpoint_to_resume(checkpoints, resume=False) is None
    assert checkpoint_to_resume(checkpoints, resume=True) is None  # --resume with nothing to resume starts
    newest = complete(checkpoints, "step_0000002")
    with pytest.raises(FileExistsError, match=f"^{tmp_path / 'run'} already holds checkpoints: pass --resume"):
        checkpoint_to_resume(checkpoints, resume=False)
    assert checkpoint_to_resume(checkpoints, resume=True) == newest


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path):
    """Opening it for writing followed the link and emptied the file it pointed at (a build's .build.lock)."""
    from pyramid.locks import exclusive

    outside = tmp_path / "notes.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".build.lock").symlink_to(outside)
    with pytest.raises(FileExistsError, match="is a link, where this lock file should be"):
        with exclusive(out, ".build.lock", "another build is writing here"):
            pass
    assert outside.read_text() == "keep me"


def test_a_directory_under_a_file_names_the_file_not_its_temporary(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(NotADirectoryError, match=r"sub: cannot be the output directory \(.*notes\.txt is a file\)"):
        with atomic_directory(tmp_path / "notes.txt" / "sub"):
            pass


def test_an_old_version_that_cannot_all_be_deleted_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    """A read-only folder in the replaced version (as a non-root user meets it) used to stay hidden beside the new
    one without a word."""
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (tmp / "locked").mkdir()
        (tmp / "locked" / "old").write_text("old")
    delete = shutil.rmtree

    def read_only_folder(path, ignore_errors=False):
        locked = Path(path) / "locked" / "old"
        if not locked.exists():
            return delete(path, ignore_errors=ignore_errors)
        if not ignore_errors:
            raise PermissionError(13, "Permission denied", str(locked))

    monkeypatch.setattr(shutil, "rmtree", read_only_folder)
    with atomic_directory(target) as tmp:
        (tmp / "new").write_text("new")
    assert os.listdir(target) == ["new"]
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith(f"warning: {target}: its earlier version could not all be deleted "
                                                           f"and stays beside it as .export.tmp{os.getpid()}-old")
    assert "locked/old: Permission denied); delete it by hand" in warning
