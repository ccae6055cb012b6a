"""The locks that keep a grid's cells from running twice (executors/locks.py), with another process holding them:
one driver per --out (a second refuses in one line; a SIGKILLed holder's lock is free again, the kernel drops its
flock), one attempt per cell (a second waits for the first). And what a killed attempt left half-written goes when
its cell starts again. The same faults on whole grids (Ray, submitit, the CLI) are in test_executors_faults.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clipadapt.errors import ConfigError
from clipadapt.executors.locks import STATE_DIR, Claim, Superseded, cell_claim, cell_lock, exclusive_out

HOLD = """
import sys
from clipadapt.executors.locks import Claim, cell_lock, exclusive_out
held = exclusive_out(sys.argv[2]) if sys.argv[1] == "out" else cell_lock(Claim(sys.argv[2], "", ""), "the cell")
with held:
    print("held", flush=True)
    sys.stdin.readline()
"""


def hold(kind: str, path: Path) -> subprocess.Popen:
    """Another process holding exclusive_out (``kind`` "out") or cell_lock ("cell") on ``path`` until a line
    arrives on its stdin."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_exclusive_out_refuses_while_held_and_not_once_its_holder_is_killed(tmp_path):
    out = tmp_path / "out"
    holder = hold("out", out)
    try:
        with pytest.raises(ConfigError) as refused, exclusive_out(out, "benchmark"):
            pytest.fail("entered a folder another process holds")
        message = str(refused.value)
        assert message.startswith(f"another benchmark is running on --out '{out}' (pid {holder.pid} on "
                                  f"{socket.gethostname()}, since ") and "\n" not in message
        assert message.endswith("); wait for it to finish, or give another --out")
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock file stays; the kernel drops the flock
        holder.wait()
    assert (out / STATE_DIR / "driver.lock").is_file()
    with exclusive_out(out, "benchmark"):
        assert json.loads((out / STATE_DIR / "driver.lock").read_text())["pid"] == os.getpid()
        (out / "result.txt").write_text("kept")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]  # its own files gone, the results kept

    fresh = tmp_path / "fresh"
    with exclusive_out(fresh):
        assert fresh.is_dir()
    assert not fresh.exists()  # made by it and nothing written: removed


FORKS = """
import os, sys, time
from clipadapt.executors.locks import exclusive_out
with exclusive_out(sys.argv[1]):
    if os.fork() == 0:  # a DataLoader worker, say: it outlives its killed parent for a while
        print(os.getpid(), flush=True)  # after the at-fork hooks ran
        time.sleep(30)
        os._exit(0)
    sys.stdin.readline()
"""


def test_a_killed_driver_s_forked_child_does_not_keep_its_lock(tmp_path):
    """flock belongs to the open file, which a fork shares: without the at-fork close, the child would hold the
    driver lock after the driver was killed, and the folder would look busy with a dead pid."""
    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-c", FORKS, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    child = int(driver.stdout.readline())
    try:
        driver.kill()
        driver.wait()
        os.kill(child, 0)  # the child still runs
        with exclusive_out(out, "benchmark"):
            pass
    finally:
        os.kill(child, 9)


@pytest.mark.parametrize("ends", ["releases", "is killed"])
def test_cell_lock_waits_for_its_other_holder(ends, tmp_path, caplog):
    path = Path(cell_claim(tmp_path / "out", "world-shapes/coop/1shot-seed1", "").lock)
    holder = hold("cell", path)
    entered = threading.Event()

    def second() -> None:
        with cell_lock(Claim(str(path), "", ""), "world-shapes/coop/1shot-seed1"):
            entered.set()

    thread = threading.Thread(target=second, daemon=True)
    try:
        thread.start()
        assert not entered.wait(1.0)  # waiting, not running beside the holder
        if ends == "releases":
            holder.stdin.write("done\n")
            holder.stdin.flush()
        else:
            holder.kill()
        holder.wait(timeout=30)
        assert entered.wait(30)
        thread.join(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert f"world-shapes/coop/1shot-seed1 is running in another process (pid {holder.pid} on " in caplog.text
    assert not path.exists() and list(path.parent.iterdir()) == []  # the lock file goes with its last holder


def test_a_cell_starting_again_removes_only_its_own_killed_writes(tmp_path):
    """What a SIGKILLed attempt of a cell left half-written (a staged run directory beside it, temporary files and
    a staged checkpoint inside it) goes when the cell starts again (engine.rundir.grid_start, under the cell's
    lock); another cell's, which may be writing right now, stays."""
    from clipadapt.engine.rundir import grid_start

    runs = tmp_path / "runs" / "world-shapes"
    run = runs / "coop" / "1shot-seed1"
    (run / "checkpoints" / ".epoch-0003.partial-k2j4").mkdir(parents=True)
    (run / "checkpoints" / ".epoch-0003.partial-k2j4" / "weights.safetensors").write_bytes(b"half")
    (run / "config.yaml").write_text("run: {}\n")
    (run / "checkpoints" / ".latest.json.x81.tmp").write_text('{"epo')
    (run / "evaluations").mkdir()
    (run / "evaluations" / ".world-colour.json.a1.tmp").write_text("{")
    (runs / "coop" / ".1shot-seed1.partial-9f").mkdir()  # a staged whole run directory (zero-shot's kind)
    (runs / "coop" / ".1shot-seed2.partial-77").mkdir()  # another cell's
    (runs / ".zeroshot.partial-3c").mkdir()  # another cell's

    assert grid_start(run, resume=True) == "resume"
    left = sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*"))
    assert left == [".zeroshot.partial-3c", "coop", "coop/.1shot-seed2.partial-77", "coop/1shot-seed1",
                    "coop/1shot-seed1/checkpoints", "coop/1shot-seed1/config.yaml", "coop/1shot-seed1/evaluations"]


def test_a_cell_sent_by_a_replaced_driver_stands_down(tmp_path):
    """A job of a killed driver that starts only after a new driver took the folder (still queued in Slurm when its
    driver died) finds another token in the driver lock: Superseded, before it touches the run. Its own driver's
    cells run; after the driver is gone (its lock file removed), a stray one stands down too."""
    out, key = tmp_path / "out", "world-shapes/coop/1shot-seed1"
    with exclusive_out(out) as old_token:
        old = cell_claim(out, key, old_token)
        with cell_lock(old, key):  # the driver that sent it holds the folder: it runs
            pass
    with exclusive_out(out) as new_token:
        assert new_token != old_token
        ran = []
        with pytest.raises(Superseded, match="sent by a driver since replaced on this folder"), cell_lock(old, key):
            ran.append(key)
        assert ran == [] and not Path(old.lock).exists()
        with cell_lock(cell_claim(out, key, new_token), key):
            ran.append(key)
        assert ran == [key]
    with pytest.raises(Superseded), cell_lock(old, key):
        pytest.fail("a stray cell ran after its driver was gone")


def test_a_filesystem_without_flock_runs_without_locks_and_says_so(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "out"
    with exclusive_out(out) as token, cell_lock(cell_claim(out, "k", token), "k"):
        assert json.loads((out / STATE_DIR / "driver.lock").read_text())["token"] == token
    assert "has no file locks (No locks available): running without them; run one driver per folder" in caplog.text
    assert not out.exists()
