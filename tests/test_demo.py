"""What `clipadapt demo` plans, without running it: one method of each family by default, every method with --full,
and settings every planned run accepts. The demo itself runs on the real world in tests/test_world_slow.py (last
test; --full, which trains every method the default does and the rest; checks in tests/demo_checks.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from clipadapt.cli import app


def test_the_default_demo_trains_one_method_of_each_family_and_full_every_method():
    from clipadapt.experiments.demo import (
        DEMO_ENSEMBLE,
        DEMO_METHODS,
        DEMO_SETTINGS,
        DEMO_WISE,
        demo_methods,
        demo_settings,
    )
    from clipadapt.methods import list_methods

    assert demo_methods() == ["linear-probe", "lora", "coop", "vpt", "tip-adapter", "gda"] == DEMO_METHODS
    assert demo_methods(full=True) == list_methods()
    assert set(DEMO_ENSEMBLE) | {DEMO_WISE[0]} <= set(DEMO_METHODS)  # the light demo still combines runs
    assert "baseline" not in DEMO_METHODS  # it would build world:tiny-resnet on a fresh clone
    # the light demo's settings leave out the sections of methods it does not train (compare refuses those)
    assert demo_settings(DEMO_METHODS) == ["train.epochs=10", "train.patience=3"]
    assert demo_settings(list_methods()) == DEMO_SETTINGS


def test_the_default_demo_settings_are_accepted_by_compare():
    from clipadapt.experiments.compare import split_overrides
    from clipadapt.experiments.demo import DEMO_METHODS, demo_settings

    per_method = split_overrides(demo_settings(DEMO_METHODS), DEMO_METHODS)
    assert per_method["lora"] == ["train.epochs=10", "train.patience=3"] and per_method["zeroshot"] == []


def test_demo_help_names_the_full_ladder():
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "--full" in result.output and "every registered method" in result.output
