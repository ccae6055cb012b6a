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
from clipadapt.executors.locks import STATE_DIR, cell_lock, cell_lock_path, exclusive_out

HOLD = """
import sys
from clipadapt.executors.locks import cell_lock, exclusive_out
held = exclusive_out(sys.argv[2]) if sys.argv[1] == "out" else cell_lock(sys.argv[2], "the cell")
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


@pytest.mark.parametrize("ends", ["releases", "is killed"])
def test_cell_lock_waits_for_its_other_holder(ends, tmp_path, caplog):
    path = cell_lock_path(tmp_path / "out", "world-shapes/coop/1shot-seed1")
    holder = hold("cell", path)
    entered = threading.Event()

    def second() -> None:
        with cell_lock(path, "world-shapes/coop/1shot-seed1"):
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
