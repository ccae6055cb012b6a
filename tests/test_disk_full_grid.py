"""A grid's cell stopped by a full disk (a one-cell ``train --sweep``, the local executor): the sweep reports the
cell failed in one line (exit 1) naming the full disk, the cell's last checkpoint is left whole, and once there is
room ``--skip-existing`` resumes that checkpoint to exactly the uninterrupted run's result.

On a private tmpfs (``unshare -rm``, as in test_disk_full.py; skipped with the reason where this machine allows no
namespace). The whole scenario runs in one Python script inside the namespace (the tmpfs ends with it): it starts the
sweep, stops it (SIGSTOP) once a checkpoint is there and none is being written, fills the disk but for a few pages (a
checkpoint does not fit, the sweep's tables do), lets it go on, copies what the failed sweep left out of the tmpfs,
frees the space and reruns with ``--skip-existing``."""

from __future__ import annotations

import csv
import json
import sys
import threading
from pathlib import Path

import pytest

from tests.test_disk_full import PAGE, checkpoint_pages, hidden, in_tmpfs, summary

EPOCHS = 8  # linear-head on the colour folder: ~0.1 s an epoch, a checkpoint after each
FREE_PAGES = 3  # left free by the filler: a checkpoint (6 pages) does not fit, sweep.csv and sweep.md do

SCENARIO = r"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

mount, model, folder, saved, epochs, free = sys.argv[1:7]
mount, saved, epochs, free = Path(mount), Path(saved), int(epochs), int(free)
sweep, filler = mount / "sweep", mount / "filler"
run = sweep / "lr=0.01-seed0"
report = {}


def command(out):
    return [sys.executable, "-m", "clipadapt", "train", "linear-head", "--model", model, "--dataset",
            f"imagefolder:{folder}", "--out", str(out), "--sweep", "linear_head.lr=0.01", "--seeds", "0",
            "--epochs", str(epochs), "--device", "cpu", "--set", "data.num_workers=0", "--set", "run.samples=0"]


def latest_epoch():
    try:
        return json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def writing():  # a checkpoint being staged, or a file being written atomically
    return [p.name for p in run.rglob(".*")] if run.is_dir() else []


def finish(process, name):
    out, err = process.communicate(timeout=240)
    report[name] = {"rc": process.returncode, "stdout": out, "stderr": err}
    report[name + "_s"] = round(time.monotonic() - start, 1)


start = time.monotonic()
first = subprocess.Popen(command(sweep), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
deadline = time.monotonic() + 180
while time.monotonic() < deadline and first.poll() is None:
    if (latest_epoch() or 0) >= 1:
        first.send_signal(signal.SIGSTOP)
        if not writing():
            break
        first.send_signal(signal.SIGCONT)  # caught mid-save: let it finish first
    time.sleep(0.002)
report["stopped_at"] = latest_epoch()
report["finished_before"] = (run / "metrics.json").exists()
with open(filler, "wb") as handle:  # all but ``free`` pages, allocated (not a sparse hole)
    os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(mount).free - free * os.sysconf("SC_PAGE_SIZE"))
report["free_filled"] = shutil.disk_usage(mount).free
first.send_signal(signal.SIGCONT)
finish(first, "first")
report["free_after"] = shutil.disk_usage(mount).free
shutil.copytree(sweep, saved / "first", symlinks=True)

filler.unlink()  # room again
again = subprocess.Popen(command(sweep) + ["--skip-existing"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
finish(again, "again")
shutil.copytree(sweep, saved / "again", symlinks=True)
print(json.dumps(report))
"""


class Reference(threading.Thread):
    """The same sweep uninterrupted, on this disk, through the API (the command's own arguments)."""

    def __init__(self, model: Path, folder: Path, out: Path) -> None:
        super().__init__(daemon=True)
        self.args, self.error = (model, folder, out), None

    def run(self) -> None:
        import clipadapt

        model, folder, out = self.args
        try:
            result = clipadapt.sweep("linear-head", ["linear_head.lr=0.01"], str(model), f"imagefolder:{folder}",
                                     seeds=[0], out=out, epochs=EPOCHS, device="cpu", progress=False,
                                     overrides=["data.num_workers=0", "run.samples=0"])
            self.error = result.failed or None
        except Exception as e:  # reported by the test
            self.error = repr(e)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_cell_on_a_full_disk_fails_in_one_line_then_resumes_to_the_same_result(tiny_clip_dir, colour_folder,
                                                                                      tmp_path):
    """The disk filled once the cell has a checkpoint: the next checkpoint does not fit, the sweep ends with exit 1
    and one ``failed:`` line naming the full disk, its tables written without the cell; the cell's latest.json names
    a whole checkpoint. With the space freed, ``--skip-existing`` resumes it (resumed_at_epochs) to the uninterrupted
    run's metrics, losses and weights."""
    from clipadapt.engine.checkpoint import load_checkpoint, read_metadata

    script, saved = tmp_path / "scenario.py", tmp_path / "saved"
    script.write_text(SCENARIO)
    saved.mkdir()
    assert in_tmpfs(tmp_path, PAGE, "true").returncode == 0  # skips here where no namespace is allowed
    reference = Reference(tiny_clip_dir, colour_folder, saved / "reference")
    reference.start()  # meanwhile, in this process (its imports are done)
    env = {"HF_HUB_OFFLINE": "1", "CLIPADAPT_HOME": str(tmp_path / "home"), "CLIPADAPT_PROGRESS": "0",
           "COLUMNS": "200"}
    done = in_tmpfs(tmp_path, 8 * 2**20, f'{sys.executable} {script} "$M" "{tiny_clip_dir}" "{colour_folder}" '
                                        f'"{saved}" {EPOCHS} {FREE_PAGES}', env=env, timeout=240)
    reference.join(timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert reference.error is None, reference.error
    report = json.loads(done.stdout)
    print("\n" + json.dumps({k: v for k, v in report.items() if k not in ("first", "again", "reference")}))
    mount_run = tmp_path / "mnt" / "sweep" / "lr=0.01-seed0"
    assert not report["finished_before"] and 1 <= report["stopped_at"] < EPOCHS, report
    assert report["free_filled"] == FREE_PAGES * PAGE < checkpoint_pages() * PAGE

    # the failed sweep: exit 1, its cell in one line naming the full disk and how to go on
    first = report["first"]
    assert first["rc"] == 1, first
    failed = [line for line in first["stderr"].splitlines() if line.startswith("failed:")]
    assert "Traceback" not in first["stderr"] + first["stdout"], first["stderr"][-3000:]
    assert len(failed) == 1, first["stderr"]
    checkpoints = mount_run / "checkpoints"
    assert failed[0].startswith(f"failed: {mount_run}: no space left on device writing '{checkpoints}/epoch-"), \
        failed[0]
    assert failed[0].endswith("free some space, then resume (clipadapt train --resume --out RUN; benchmark, compare "
                              "or a sweep: the same command with --skip-existing)"), failed[0]
    # the sweep's tables were still written, without the cell
    tables = saved / "first"
    assert "Cells without a finished run (failed or interrupted): linear-head lr=0.01." in (
        tables / "sweep.md").read_text()
    rows = list(csv.DictReader((tables / "sweep.csv").open()))
    assert [(row["linear_head.lr"], row["seeds"], row["runs"]) for row in rows] == [("0.01", "0", "")]

    # the cell's last checkpoint is whole, and nothing half-written is left
    run = saved / "first" / "lr=0.01-seed0"
    assert not (run / "metrics.json").exists() and hidden(run) == []
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert report["stopped_at"] <= latest["epoch"] < EPOCHS
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [latest["dir"], "latest.json"]
    checkpoint = run / "checkpoints" / latest["dir"]
    state = load_checkpoint(checkpoint, read_metadata(checkpoint / "weights.safetensors"))
    assert state.epoch == latest["epoch"] and len(state.progress["history"]) == latest["epoch"]

    # --skip-existing with room again: the cell resumes its checkpoint to the uninterrupted run's result
    again = report["again"]
    assert again["rc"] == 0, again["stderr"][-3000:]
    assert "lr=0.01 seed 0: resuming" in again["stderr"], again["stderr"]
    resumed = saved / "again" / "lr=0.01-seed0"
    record = json.loads((resumed / "metrics.json").read_text())
    assert record["resumed_at_epochs"] == [latest["epoch"]]
    assert not (resumed / "checkpoints").exists() and hidden(resumed) == []
    assert summary(resumed) == summary(saved / "reference" / "lr=0.01-seed0")
