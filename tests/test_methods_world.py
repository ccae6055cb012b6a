"""Methods really learn: on the pretrained world:tiny, adaptation beats zero-shot by a clear margin.

Measured (docs/benchmarks.md): world:shapes zero-shot 0.833, linear-probe 0.891, lora 0.880; world:shapes-novel
with 4 shots zero-shot 0.603, linear-probe 0.931, lora 0.784.
"""

from __future__ import annotations

import pytest

from clipadapt.training import load_experiment, run_training

pytestmark = pytest.mark.slow


def zero_shot_acc1(dataset: str) -> float:
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine.zeroshot import evaluate_zero_shot
    from clipadapt.models import load_model

    result = evaluate_zero_shot(load_model("world:tiny"), load_dataset(DataConfig(dataset=dataset)), "test",
                                ["simple"])
    return result.best_result.metrics["acc1"]


@pytest.mark.parametrize("dataset, shots, margin", [("world:shapes", None, 0.03), ("world:shapes-novel", 4, 0.10)])
def test_linear_probe_and_lora_beat_zero_shot(dataset, shots, margin, with_world, tmp_path):
    zero_shot = zero_shot_acc1(dataset)
    for method in ("linear-probe", "lora"):
        overrides = ["model.spec=world:tiny", f"data.dataset={dataset}", f"run.out={tmp_path / method}"]
        if shots:
            overrides.append(f"data.shots={shots}")
        record = run_training(load_experiment(method, None, overrides)).record
        assert record["metrics"]["acc1"] > zero_shot + margin, (method, record["metrics"]["acc1"], zero_shot)
        if shots:
            assert record["shots"] == shots


# The prompt methods on the task world:tiny was not pretrained for. Measured (docs/methods.md, seeds 0-2): zero-shot
# 0.594 (`simple`); coop with one context per class ~0.93. coop's shared context (its default) only ties zero-shot
# here, see the docs. visual-prompt, vpt and vision-prefix at their defaults are checked on the demo's own runs
# (same task, shots and schedule) in test_world_slow.py, which trains them anyway.
def test_class_specific_coop_beats_zero_shot_on_novel_pairs(with_world, tmp_path):
    zero_shot = zero_shot_acc1("world:shapes-novel")
    overrides = ["model.spec=world:tiny", "data.dataset=world:shapes-novel", "data.shots=8",
                 f"run.out={tmp_path / 'coop'}", "coop.class_specific=true"]
    record = run_training(load_experiment("coop", None, overrides)).record
    assert record["metrics"]["acc1"] > zero_shot + 0.10, (record["metrics"]["acc1"], zero_shot)
    assert record["shots"] == 8 and record["selection"]["val_acc"] > 0
