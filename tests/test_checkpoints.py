"""The one atomic-write helper and the checkpoint convention both trainers share."""

from __future__ import annotations

import os
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


def test_a_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "step_0000001"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_bytes(b"1")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    (tmp_path / ".step_0000001.tmp12345").mkdir()  # left by a killed writer
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_bytes(b"2")
        assert not target.exists()
    assert (target / "weights").read_bytes() == b"2" and os.listdir(tmp_path) == ["step_0000001"]


def test_a_replaced_directory_is_never_half_deleted_where_it_stood(tmp_path, monkeypatch):
    """The old version goes aside before the new one takes its place; a kill while deleting it (a large export:
    minutes) leaves the new version whole, and the next write removes what is left of the old."""
    import shutil

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
