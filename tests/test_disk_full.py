"""A full disk while writing results or checkpoints: one line, the last complete checkpoint intact, resumable.

On a real tmpfs of a few pages, mounted in a private mount namespace (``unshare -rm``: it disappears with the
namespace's shell, so each scenario runs whole inside one shell script). Where namespaces or mounts are not allowed
(an unprivileged container), the tests skip and say why.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipadapt.errors import DiskFull, format_bytes
from clipadapt.io import no_space_errno

PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs counts whole pages per file


def in_tmpfs(tmp_path: Path, size: int, script: str, env: dict | None = None,
             timeout: int = 120) -> subprocess.CompletedProcess:
    """Run the shell ``script`` with a ``size``-byte tmpfs mounted at $M (``tmp_path/mnt``), in a namespace of its
    own; ``mount -o remount,size=N $M`` in the script frees space. Skips when this machine allows no namespace."""
    mount = tmp_path / "mnt"
    mount.mkdir(exist_ok=True)
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare command (util-linux) to mount a private tmpfs")
    probe = subprocess.run([unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size={PAGE} tmpfs '{mount}'"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here (unshare -rm + mount): {probe.stderr.strip()[:200]}")
    full = f"set -u\nM='{mount}'\nmount -t tmpfs -o size={size} tmpfs \"$M\" || exit 99\n{script}"
    return subprocess.run([unshare, "-rm", "sh", "-c", full], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


WRITERS = r"""
import json, os, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file
from clipadapt.errors import DiskFull, format_bytes
from clipadapt.io import atomic_path, atomic_write_json, staged_directory

root, report = Path(sys.argv[1]), {}
atomic_write_json(root / "results.json", {"acc": 0.5})
with staged_directory(root / "epoch-0001") as stage:  # a complete checkpoint-like directory
    atomic_write_json(stage / "state.json", {"epoch": 1})
filled = 0
try:  # fill the disk with results of a page each until one does not fit
    while True:
        atomic_write_json(root / f"part-{filled}.json", "x" * 3000)
        filled += 1
except DiskFull as e:
    report["filling"] = str(e)
report["filled"] = filled
os.remove(root / "part-0.json")  # a page free again
try:
    atomic_write_json(root / "results.json", {"acc": 0.75, "rows": ["y" * 100] * 200})
except DiskFull as e:
    report["json"] = str(e)
try:  # a file inside a staged directory; the native writer says 'os error 28' in its message only
    with staged_directory(root / "epoch-0001", overwrite=True) as stage:
        atomic_write_json(stage / "state.json", {"epoch": 2})
        with atomic_path(stage / "weights.safetensors") as tmp:
            save_file({"w": np.zeros(4096, dtype=np.float32)}, str(tmp))
except DiskFull as e:
    report["staged"] = str(e)
report["results"] = json.loads((root / "results.json").read_text())
report["epoch"] = json.loads((root / "epoch-0001" / "state.json").read_text())
report["names"] = sorted(os.listdir(root)) + sorted(os.listdir(root / "epoch-0001"))
print(json.dumps(report))
"""


def test_atomic_writers_on_a_full_tmpfs_raise_disk_full_and_keep_the_old_file(tmp_path):
    snippet = tmp_path / "writers.py"
    snippet.write_text(WRITERS)
    done = in_tmpfs(tmp_path, 16 * PAGE, f'{sys.executable} {snippet} "$M"', timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    mount = tmp_path / "mnt"
    assert report["filled"] == 16 - 2  # results.json and the epoch's state.json hold a page each
    free = format_bytes(PAGE)  # the page freed, once the failed write's temporary file or directory is removed
    for key, path in [("json", mount / "results.json"), ("staged", mount / "epoch-0001")]:
        line = report[key]
        assert "\n" not in line and line.startswith(f"no space left on device writing '{path}' (")
        assert "free some space, then resume (clipadapt train --resume --out RUN" in line
        assert f"({free} free on its filesystem)" in line
    assert report["results"] == {"acc": 0.5}  # the previous file, untouched
    assert report["epoch"] == {"epoch": 1}  # the previous directory too
    assert not [n for n in report["names"] if n.startswith(".")]  # no .tmp file, no .partial- directory left


CHECKPOINTS = r"""
import json, os, shutil, sys
from pathlib import Path
import torch
from clipadapt.engine.checkpoint import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from clipadapt.errors import DiskFull

root, report = Path(sys.argv[1]), {}
run, filler, page = root / "run", root / "filler", os.sysconf("SC_PAGE_SIZE")
metadata = {"model_fingerprint": "m", "method": "linear-head", "classes": "a,b"}


def state(epoch):
    weights = {"head.weight": torch.full((2, 300), float(epoch))}
    return TrainingState(epoch, weights, weights, {"state": {}, "param_groups": []}, {"step": epoch},
                         {"torch": torch.zeros(8, dtype=torch.uint8)}, {"history": []}, metadata)


def leave_free(size):  # the filler takes all but ``size`` bytes (whole pages: tmpfs counts pages)
    more = shutil.disk_usage(root).free - size
    with open(filler, "ab") as handle:
        end = os.path.getsize(filler)
        if more > 0:
            os.posix_fallocate(handle.fileno(), end, more)  # allocated, not a sparse hole
        else:
            os.truncate(filler, end + more)
    assert shutil.disk_usage(root).free == size


def attempt(epoch, key):
    try:
        save_checkpoint(run, state(epoch))
    except DiskFull as e:
        report[key] = str(e)
    latest = latest_checkpoint(run)
    report[key + "_latest"] = [latest.name, float(load_checkpoint(latest, metadata).weights["head.weight"][0, 0]),
                               sorted(p.name for p in (run / "checkpoints").iterdir())]


used = shutil.disk_usage(root).used
save_checkpoint(run, state(1))
one = shutil.disk_usage(root).used - used - page  # one checkpoint directory, without latest.json
report["pages"] = one // page
leave_free(one - page)  # the next directory does not fit
attempt(2, "inside")
leave_free(one)  # the next directory fits, its latest.json does not: that directory is left over
attempt(2, "latest")
leave_free(page)  # room for latest.json only: the left-over directory goes first, then epoch 2 is written again
attempt(2, "again")

from types import SimpleNamespace
from clipadapt.engine.rundir import start_run_dir

leave_free(0)  # a new run whose config.yaml does not fit: no directory left that a rerun would refuse
try:
    start_run_dir(SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None), root / "new", {"a": 1}, False)
except DiskFull as e:
    report["start"] = [str(e), (root / "new").exists()]
print(json.dumps(report))
"""


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_named_and_whole(tmp_path):
    """Out of space inside the new epoch's directory, or at latest.json once the directory is in place: latest.json
    still names the previous checkpoint, which loads. A directory left over from the second failure is removed before
    the next save writes anything, so that save needs no more room than one checkpoint. A new run whose config.yaml
does not fit leaves no directory behind, and says to rerun rather than resume."""
    snippet = tmp_path / "checkpoints.py"
    snippet.write_text(CHECKPOINTS)
    done = in_tmpfs(tmp_path, 64 * PAGE, f'{sys.executable} {snippet} "$M"', timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    checkpoints = tmp_path / "mnt" / "run" / "checkpoints"
    assert report["pages"] >= 5  # five files of a page or more
    assert report["inside"].startswith(f"no space left on device writing '{checkpoints / 'epoch-0002'}' (")
    assert report["inside_latest"] == ["epoch-0001", 1.0, ["epoch-0001", "latest.json"]]
    assert report["latest"].startswith(f"no space left on device writing '{checkpoints / 'latest.json'}' (0 B free")
    assert report["latest_latest"] == ["epoch-0001", 1.0, ["epoch-0001", "epoch-0002", "latest.json"]]
    assert "again" not in report  # no error: the left-over directory made room
    assert report["again_latest"] == ["epoch-0002", 2.0, ["epoch-0002", "latest.json"]]
    line, exists = report["start"]
    assert line.startswith(f"no space left on device writing '{tmp_path / 'mnt' / 'new' / 'config.yaml'}' (0 B free")
    assert line.endswith("): free some space, then run the same command again") and not exists


def test_a_raw_full_disk_outside_the_writers_is_one_cli_line(tmp_path):
    """A file written without clipadapt.io (a log, tensorboard's events) fails the command with the same line."""
    snippet = tmp_path / "log.py"
    snippet.write_text(r"""
import sys, typer
from typer.testing import CliRunner
from clipadapt.cli.common import user_errors

app = typer.Typer()

@app.command()
@user_errors
def log(path: str) -> None:
    with open(path, "w") as handle:
        handle.write("event\n" * 100_000)

result = CliRunner().invoke(app, [sys.argv[1] + "/events.log"])
print(result.exit_code)
print(result.output, end="")
""")
    done = in_tmpfs(tmp_path, 4 * PAGE, f'{sys.executable} {snippet} "$M"', timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    code, *lines = done.stdout.splitlines()
    assert code == "2" and len(lines) == 1, done.stdout
    # a failed write() names no file (open() did): the line says what happened and what to do
    assert lines[0] == f"error: {DiskFull()}" == ("error: no space left on device: free some space, then resume "
                                                  "(clipadapt train --resume --out RUN; benchmark, compare or a "
                                                  "sweep: the same command with --skip-existing)")
    assert "Traceback" not in done.stdout


def test_quota_and_native_messages_count_as_a_full_disk():
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/data/run/metrics.json")
    assert no_space_errno(quota) == errno.EDQUOT
    assert str(DiskFull("/data/run/metrics.json", 3 * 2**30, errno.EDQUOT)).startswith(
        "disk quota exceeded writing '/data/run/metrics.json' (3.0 GiB free on its filesystem): free some space")
    wrapped = RuntimeError("could not save")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert no_space_errno(wrapped) == errno.ENOSPC
    assert no_space_errno(RuntimeError("I/O error: No space left on device (os error 28)")) == errno.ENOSPC
    assert no_space_errno(OSError(errno.EACCES, "Permission denied")) is None
    assert no_space_errno(ValueError("os error 280)")) is None


# --- a training run ---------------------------------------------------------------------------------------------------

# Bytes of a linear-head run on tiny_clip_dir (3 classes): config.yaml, latest.json and the files of one checkpoint
# (weights, best, optimizer, rng, state.json, which grows with the history).
CONFIG, LATEST, CHECKPOINT = 1200, 40, (576, 576, 980, 5128, 2200)


def pages(size: int) -> int:
    return -(-size // PAGE)


def checkpoint_pages() -> int:
    return sum(pages(size) for size in CHECKPOINT)


def summary(run: Path) -> dict:
    from safetensors.torch import load_file

    record = json.loads((run / "metrics.json").read_text())
    history = [line.rsplit(",", 1)[0] for line in (run / "history.csv").read_text().splitlines()]  # not "seconds"
    weights = {k: v.tolist() for k, v in load_file(str(run / "weights" / "trainable.safetensors")).items()}
    return {"metrics": record["metrics"], "test_loss": record["test_loss"], "best_epoch": record["best_epoch"],
            "history": history, "weights": weights}


def hidden(run: Path) -> list[str]:
    return [str(p.relative_to(run)) for p in run.rglob(".*")]


@pytest.mark.slow
def test_training_on_a_full_disk_stops_with_one_line_and_resumes_to_the_same_result(tiny_clip_dir, colour_folder,
                                                                                    tmp_path):
    """A checkpoint that does not fit (epoch 2), then the run's results that do not fit (after epoch 4): each a
    one-line error with latest.json naming a complete checkpoint; after each, more room and ``--resume``. The
    result equals an uninterrupted run's: metrics, test loss, every epoch's losses and the weights."""
    from clipadapt.engine.checkpoint import load_checkpoint, read_metadata

    out = tmp_path / "out"
    out.mkdir()
    one = pages(CONFIG) + pages(LATEST) + checkpoint_pages()  # the run after its first checkpoint
    # at the second checkpoint, the first stays until latest.json moved on: a checkpoint and a page more are needed
    first = (one + checkpoint_pages() // 2) * PAGE  # half of it fits
    second = (one + checkpoint_pages() + pages(LATEST) + 1) * PAGE  # every checkpoint fits, the figures do not
    train = (f"{sys.executable} -m clipadapt train linear-head --model '{tiny_clip_dir}' --dataset "
             f"'imagefolder:{colour_folder}' --epochs 4 --device cpu --set data.num_workers=0")
    script = f"""
{train} --out '{out}/reference' > '{out}/reference.log' 2>&1 &
for step in first second last; do
    if [ $step = first ]; then {train} --out "$M/run" > '{out}/'$step.out 2> '{out}/'$step.err
    else {train} --out "$M/run" --resume > '{out}/'$step.out 2> '{out}/'$step.err; fi
    echo $? > '{out}/'$step.rc
    cp -a "$M/run" '{out}/'$step
    [ $step = first ] && mount -o remount,size={second} "$M"
    [ $step = second ] && mount -o remount,size=64m "$M"
done
wait
"""
    env = {"HF_HUB_OFFLINE": "1", "CLIPADAPT_HOME": str(tmp_path / "home"), "CLIPADAPT_PROGRESS": "0"}
    done = in_tmpfs(tmp_path, first, script, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "mnt" / "run"

    def failed(step: str) -> str:
        rc, err = (out / f"{step}.rc").read_text().strip(), (out / f"{step}.err").read_text()
        assert rc == "2" and len(err.splitlines()) == 1, f"{step}: exit {rc}\n{err[-3000:]}"
        assert err.startswith("error: no space left on device writing ") and "Traceback" not in err
        assert "free some space, then resume (clipadapt train --resume --out RUN" in err
        assert not (out / step / "metrics.json").exists() and hidden(out / step) == []
        return err

    err = failed("first")
    assert f"writing '{run / 'checkpoints' / 'epoch-0002'}'" in err
    latest = json.loads((out / "first" / "checkpoints" / "latest.json").read_text())
    assert latest == {"epoch": 1, "dir": "epoch-0001"}
    assert sorted(p.name for p in (out / "first" / "checkpoints").iterdir()) == ["epoch-0001", "latest.json"]
    checkpoint = out / "first" / "checkpoints" / "epoch-0001"
    state = load_checkpoint(checkpoint, read_metadata(checkpoint / "weights.safetensors"))
    assert state.epoch == 1 and len(state.progress["history"]) == 1

    # every epoch trained, a figure of the results did not fit (a resumed run that kept the checkpoint it resumed
    # from mapped after removing it would hold that space and fail at epoch-0003 instead)
    err = failed("second")
    assert f"writing '{run}{os.sep}" in err and "checkpoints" not in err
    assert json.loads((out / "second" / "checkpoints" / "latest.json").read_text())["epoch"] == 4

    assert (out / "last.rc").read_text().strip() == "0", (out / "last.err").read_text()[-3000:]
    assert (out / "reference" / "metrics.json").is_file(), (out / "reference.log").read_text()[-3000:]
    assert not (out / "last" / "checkpoints").exists() and hidden(out / "last") == []
    assert summary(out / "last") == summary(out / "reference")
