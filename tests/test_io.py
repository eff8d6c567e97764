"""Checkpoints and other run files are replaced whole or not at all: a writer killed mid-write or
a full disk leaves the previous file as it was."""

import errno
import os
import stat
import subprocess
import sys

import pytest
import torch

from plrlhf.checkpoint_io import AtomicCheckpointIO
from plrlhf.io import atomic_directory, atomic_write_text
from tests.conftest import ROOT

KILLED_WRITER = """
import os, signal, sys, torch
from plrlhf.checkpoint_io import AtomicCheckpointIO

def dying_save(obj, handle):  # half a checkpoint reaches the disk, then the process dies
    handle.write(b"x" * 100_000)
    handle.flush()
    os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1000)}, sys.argv[1])
"""


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000)}, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], env=env, timeout=120)
    assert killed.returncode == -9
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(path)["w"], torch.zeros(1000))
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]  # the half file is not a checkpoint


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_debris(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.zeros(10)}, path)

    def full_disk(obj, handle):
        handle.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"w": torch.ones(10)}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["w"], torch.zeros(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_text_files_and_directories_are_replaced_whole(tmp_path):
    atomic_write_text(tmp_path / "users.json", "old")
    with pytest.raises(RuntimeError), open(os.devnull) as _:
        from plrlhf.io import atomic_file

        with atomic_file(tmp_path / "users.json", "w") as handle:
            handle.write("new, half")
            raise RuntimeError("killed")
    assert (tmp_path / "users.json").read_text() == "old"
    with atomic_directory(tmp_path / "export") as out:
        (out / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "export") as out:
        (out / "a").write_text("2")
        raise RuntimeError("failed half way")
    assert (tmp_path / "export" / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "users.json"]


def test_the_cli_trainer_writes_checkpoints_atomically(monkeypatch):
    from plrlhf.cli import PlrlhfCLI

    monkeypatch.chdir(ROOT)
    cli = PlrlhfCLI.__new__(PlrlhfCLI)
    from lightning.pytorch import Trainer

    monkeypatch.setattr(
        "lightning.pytorch.cli.LightningCLI.instantiate_trainer", lambda self, **kw: Trainer(logger=False)
    )
    assert isinstance(cli.instantiate_trainer().strategy.checkpoint_io, AtomicCheckpointIO)


def test_atomic_files_and_directories_get_the_permissions_of_plain_ones(tmp_path):
    (tmp_path / "plain.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    atomic_write_text(tmp_path / "users.json", "{}")  # through mkstemp: 0600 unless set
    with atomic_directory(tmp_path / "export") as out:  # through mkdtemp: 0700 unless set
        (out / "a").write_text("1")

    def mode(name):
        return stat.S_IMODE((tmp_path / name).stat().st_mode)

    assert mode("users.json") == mode("plain.json") and mode("export") == mode("plain")
