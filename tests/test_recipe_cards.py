"""Recipe cards (issue 29): every method has one, each card's "ours" equals the method's effective configuration
(so a changed default fails until its card says so), and docs/methods.md carries them as rendered."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipadapt.classification import testtime_run
from clipadapt.classification.experiment import experiment_class
from clipadapt.classification.testtime_run import TEST_TIME_METHODS
from clipadapt.cli import app
from clipadapt.config import to_dict
from clipadapt.errors import ConfigError
from clipadapt.methods import METHODS
from clipadapt.methods.recipe_cards import BEGIN, END, card_names, load_card, parse_card, render_cards

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
TRAINED = sorted(n for n in METHODS.names() if METHODS.get(n).method_class.__module__.startswith("clipadapt."))
OWN = sorted([*TRAINED, *TEST_TIME_METHODS])  # test-time methods have cards; keys: TestTimeExperiment's


def effective(method: str, key: str):
    """What ``key`` of a card resolves to for ``method``'s default run (recipe_cards' docstring)."""
    kind, _, name = key.partition(".")
    if kind in ("class", "module"):
        method_class = METHODS.get(method).method_class
        return getattr(method_class if kind == "class" else importlib.import_module(method_class.__module__), name)
    node = to_dict(testtime_run.TestTimeExperiment() if method in TEST_TIME_METHODS else experiment_class(method)())
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{method}: card key '{key}' is not in its config"
        node = node[part]
    return node


def normalise(value):
    if isinstance(value, tuple | list):
        return [normalise(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def test_every_method_has_a_card_and_every_card_a_method():
    assert set(card_names()) == set(OWN)


@pytest.mark.parametrize("method", OWN)
def test_the_card_equals_the_effective_configuration(method):
    card = load_card(method)
    assert card.method == method and card.settings
    for setting in card.settings:
        if setting.key is not None:
            assert normalise(effective(method, setting.key)) == normalise(setting.ours), (
                f"{method}: '{setting.setting}' ({setting.key}) is {effective(method, setting.key)!r}, its card says "
                f"{setting.ours!r}: change the card (and say why it differs from the reference) or the default")


def test_docs_carry_the_rendered_cards():
    text = DOCS.read_text()
    assert BEGIN in text and END in text, "docs/methods.md has no recipe-card block"
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == render_cards(), ("docs/methods.md's recipe cards are stale: run python -c 'from pathlib import "
                                     "Path; from clipadapt.methods.recipe_cards import replace_rendered as r; "
                                     "p = Path(\"docs/methods.md\"); p.write_text(r(p.read_text()))'")


def test_a_card_without_a_commit_or_a_source_is_refused():
    good = {"method": "x", "reference": {"repository": "a/b", "commit": "0" * 40},
            "settings": [{"setting": "lr", "reference": "1e-3", "source": "main.py:3", "key": None, "ours": 1e-3}]}
    assert parse_card(good, "x.yaml").settings[0].source == "main.py:3"
    with pytest.raises(ConfigError, match=r"reference.commit must be 40 hex digits \(quoted\), got 'main'"):
        parse_card({**good, "reference": {"repository": "a/b", "commit": "main"}}, "x.yaml")
    with pytest.raises(ConfigError, match="setting 'lr' has no source"):
        parse_card({**good, "settings": [{**good["settings"][0], "source": None}]}, "x.yaml")


def test_methods_card_prints_a_card_and_refuses_an_unknown_name():
    result = CliRunner().invoke(app, ["methods", "--card", "gda"])
    assert result.exit_code == 0, result.output
    assert "mrflogs/ICLR24" in result.output and "views" in result.output
    result = CliRunner().invoke(app, ["methods", "--card", "gdaa"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: no recipe card for method 'gdaa'; cards: ")
