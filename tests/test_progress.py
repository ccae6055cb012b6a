"""Progress when output is not a terminal: throttled plain lines, nothing for short work."""

from __future__ import annotations

import subprocess
import sys

from clipadapt.progress import LINE_PERCENT, QUIET_SECONDS, ProgressLines, _TrainingBar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_short_work_prints_nothing():
    clock, lines = Clock(), []
    progress = ProgressLines("encoding", 100, "img", clock=clock, write=lines.append)
    for _ in range(100):
        clock.now += 0.01
        progress.advance()
    progress.finish()
    assert lines == []


def test_long_work_prints_every_ten_percent_with_an_estimate():
    clock, lines = Clock(), []
    progress = ProgressLines("pretraining world:tiny", 1000, "steps", clock=clock, write=lines.append)
    for step in range(1, 1001):
        clock.now = step / 10  # 100 s in all
        progress.advance()
    progress.finish()
    first_due = int(QUIET_SECONDS * 10)  # step 50: 5% done when the quiet period ends
    assert lines[0].startswith(f"pretraining world:tiny: {first_due}/1000 steps (5%)")
    assert "left" in lines[1] and "(10%)" in lines[1]
    percents = [int(line.split("(")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and percents[-1] == 100
    assert all(b - a <= LINE_PERCENT for a, b in zip(percents[1:], percents[2:], strict=False))
    assert len(lines) <= 100 // LINE_PERCENT + 2


def test_slow_steps_print_at_least_every_twenty_seconds():
    clock, lines = Clock(), []
    progress = ProgressLines("training", 1000, "steps", clock=clock, write=lines.append)
    for _ in range(30):
        clock.now += 3.0  # 90 s for 3% of the work
        progress.advance()
    assert [line.split(",")[1].strip() for line in lines] == ["6s elapsed", "27s elapsed", "48s elapsed",
                                                             "1m09s elapsed", "1m30s elapsed"]  # no 10% crossed


def test_training_lines_read_the_loss_only_when_a_line_is_due():
    clock, lines = Clock(), []
    bar = _TrainingBar(None, epochs=2, steps_per_epoch=50,
                       lines=ProgressLines("training", 100, "steps", clock=clock, write=lines.append))
    wanted = 0
    for epoch in range(2):
        for _ in range(50):
            clock.now += 1.0
            bar.advance()
            if bar.wants_metrics:
                wanted += 1
                bar.step(0.5, 0.75)
        bar.end_epoch(epoch, {"val_loss": 0.4, "val_acc": 0.8})
    assert 0 < wanted <= 12
    assert any("train loss 0.5000" in line for line in lines)
    assert lines[-1].endswith("epoch 2/2: val loss 0.4000  val acc 0.800")


def test_a_piped_command_gets_lines_not_bars(tmp_path):
    code = ("from clipadapt.progress import progress_bar, QUIET_SECONDS\n"
            "import clipadapt.progress as p\n"
            "p.QUIET_SECONDS = 0.0\n"
            "with progress_bar('work', total=4, unit='items') as advance:\n"
            "    [advance() for _ in range(4)]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"CLIPADAPT_PROGRESS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "work: 1/4 items (25%)" in done.stderr and "\x1b[" not in done.stderr


def test_an_iteration_budget_sets_the_bar_total():
    """157 steps of a 313-step epoch (the demo's captioning): the bar counts 157, not the epoch's 313."""
    from rich.progress import Progress

    clock, lines = Clock(), []
    bar = _TrainingBar(None, epochs=1, steps_per_epoch=313, total_steps=157,
                       lines=ProgressLines("training", 157, "steps", clock=clock, write=lines.append))
    assert bar.epoch_steps(0) == 157 and bar.epoch_steps(1) == 0
    for _ in range(157):
        clock.now += 1.0
        bar.advance()
    bar.end_epoch(0, {"train_loss": 0.5, "train_acc": 0.25})
    assert bar.lines.done == 157 and "157/157 steps (100%)" in " ".join(lines)
    assert lines[-1].endswith("epoch 1/1: train loss 0.5000  train acc 0.250 (no validation)")
    with Progress(disable=True) as progress:
        rich_bar = _TrainingBar(progress, epochs=3, steps_per_epoch=10, total_steps=25)
        assert [rich_bar.epoch_steps(e) for e in range(3)] == [10, 10, 5]
        assert progress.tasks[1].total == 10
        rich_bar.start(2)  # resumed in the last epoch
        assert progress.tasks[1].total == 5


def test_grid_progress_line_counts_queued_running_failed_retried_and_time_left():
    from clipadapt.progress import GridProgress

    now = [100.0]
    progress = GridProgress(4, clock=lambda: now[0])
    now[0] += 60  # two cells in a minute: two more take another minute
    counts = {"done": 1, "failed": 1, "running": 1, "queued": 1, "total": 4, "retried": 1}
    line = progress.line("world-colour/coop/1shot-seed1", False, 75, counts)
    assert line == ("[2/4] done world-colour/coop/1shot-seed1 (1m15s) · 1 done, 1 running, 1 queued, 1 failed, "
                    "1 retried (worker lost) · 1m00s elapsed, ~1m00s left")
    assert "retried" not in progress.line("k", True, 1, {**counts, "retried": 0})


def test_grid_progress_counts_the_cells_to_run_not_those_kept():
    from clipadapt.progress import GridProgress

    progress = GridProgress(10, clock=lambda: 0.0)  # ten planned, six kept by --skip-existing: four to run
    line = progress.line("k", False, 1, {"done": 4, "failed": 0, "running": 0, "queued": 0, "total": 4})
    assert line.startswith("[4/4] done k") and "left" not in line
