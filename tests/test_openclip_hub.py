"""Refusals that must name the problem: an open_clip spec without pretrained weights, and a hub dataset that fails
for a reason other than the network (the offline advice is only for network failures)."""

from __future__ import annotations

import re
import sys
import types

import datasets as hfds
import pytest
from typer.testing import CliRunner

from clipadapt.cli import app
from clipadapt.data import DataConfig, load_dataset
from clipadapt.errors import ClipAdaptError, DataError
from clipadapt.models import load_model

runner = CliRunner()

OFFLINE_ADVICE = r"where the hub is reachable run .*save_to_disk.*--data-root DIR$"


# -- open_clip:ARCH without a tag --------------------------------------------------------------------------------
@pytest.fixture
def no_open_clip(monkeypatch):
    """open_clip not installed (it is not in the dev environment; None in sys.modules makes sure of it)."""
    monkeypatch.setitem(sys.modules, "open_clip", None)


@pytest.fixture
def fake_open_clip(monkeypatch):
    """A stand-in with the real API names (open_clip.pretrained: list_pretrained_tags_by_model(model) -> list of
    tags; open_clip.factory: list_models() -> architectures, create_model(name, pretrained=...))."""
    module = types.ModuleType("open_clip")
    tags = {"RN50": ["openai", "yfcc15m"], "ViT-B-32": ["openai", "laion2b_s34b_b79k"], "ViT-Tiny": []}
    module.created = []
    module.list_models = lambda: list(tags)
    module.list_pretrained_tags_by_model = lambda model: list(tags.get(model, []))

    def create_model(name, pretrained=None, **kwargs):
        module.created.append((name, pretrained))
        raise RuntimeError(f"Pretrained weights ({pretrained}) not found for model {name}.\nAvailable: ...")

    module.create_model = create_model
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return module


def test_open_clip_without_a_tag_is_refused_without_open_clip(no_open_clip):
    with pytest.raises(ClipAdaptError) as error:
        load_model("open_clip:ViT-B-32")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model 'open_clip:ViT-B-32' names no pretrained tag, and open_clip would load random "
                              "weights; use open_clip:ARCH/TAG, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert "clipadapt[openclip]" in message  # how to get the list of tags
    # with a tag, the same environment asks for the extra instead (the spec itself is fine)
    with pytest.raises(ClipAdaptError, match=r"^open_clip models need the optional extra"):
        load_model("open_clip:ViT-B-32/openai")
    with pytest.raises(ClipAdaptError, match=r"^model 'open_clip:/openai' names no open_clip architecture"):
        load_model("open_clip:/openai")


def test_open_clip_without_a_tag_lists_the_tags_and_builds_nothing(fake_open_clip):
    with pytest.raises(ClipAdaptError) as error:
        load_model("open_clip:ViT-B-32")
    assert str(error.value).endswith("; pretrained tags for ViT-B-32: openai, laion2b_s34b_b79k")
    with pytest.raises(ClipAdaptError, match=r"names no pretrained tag.*; open_clip has no pretrained weights for "
                                             r"ViT-Tiny$"):
        load_model("open_clip:ViT-Tiny/")
    with pytest.raises(ClipAdaptError, match=r"'ViT-Nope' is not an open_clip architecture either; architectures: "
                                             r"RN50, ViT-B-32, ViT-Tiny$"):
        load_model("open_clip:ViT-Nope")
    assert fake_open_clip.created == []  # no random model was built
    # a tagged spec goes to open_clip with that tag; its failure is one line
    with pytest.raises(ClipAdaptError, match=r"^open_clip could not load 'RN50/yfcc15m': Pretrained weights "
                                             r"\(yfcc15m\) not found for model RN50\.$"):
        load_model("open_clip:RN50/yfcc15m")
    assert fake_open_clip.created == [("RN50", "yfcc15m")]


def test_train_with_an_untagged_open_clip_model_exits_2_and_writes_nothing(no_open_clip, colour_folder, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "linear-head", "--model", "open_clip:ViT-B-32", "--dataset",
                                 f"imagefolder:{colour_folder}", "--out", str(out), "--set", "data.num_workers=0"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "names no pretrained tag" in lines[0] and "open_clip:ARCH/TAG" in lines[0], lines
    assert not out.exists() and list(tmp_path.iterdir()) == []


# -- hub datasets: offline advice only for network failures ------------------------------------------------------
def _raising(error: BaseException):
    def load_dataset_stub(*args, **kwargs):
        raise error
    return load_dataset_stub


def _chained(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as e:
        return e


NETWORK_FAILURES = {  # kind: (error, the reason the message gives)
    "connection": (ConnectionError("Couldn't reach 'uoft-cs/cifar10' on the Hub (OfflineModeIsEnabled)"),
                   "Couldn't reach 'uoft-cs/cifar10' on the Hub (OfflineModeIsEnabled)"),
    "timeout": (TimeoutError("timed out"), "timed out"),
    "httpx-style": (type("ConnectError", (Exception,), {})("[Errno -3] Temporary failure in name resolution"),
                    "[Errno -3] Temporary failure in name resolution"),
    "wrapped": (_chained(hfds.exceptions.DatasetNotFoundError("Dataset 'uoft-cs/cifar10' doesn't exist on the Hub "
                                                              "or cannot be accessed."),
                         ConnectionError("Connection refused")), "Connection refused"),
}


@pytest.mark.parametrize("kind", list(NETWORK_FAILURES))
def test_network_failures_get_the_offline_advice(kind, monkeypatch):
    error, reason = NETWORK_FAILURES[kind]
    monkeypatch.setattr(hfds, "load_dataset", _raising(error))
    with pytest.raises(DataError) as raised:
        load_dataset(DataConfig(dataset="cifar10"))
    message = str(raised.value)
    assert message.startswith(f"could not load hub dataset 'uoft-cs/cifar10' ({reason}). To work offline: "), message
    assert re.search(OFFLINE_ADVICE, message) and "\n" not in message


def _handled_network_error_then(error: BaseException):
    """A stub that meets a network error, handles it, and raises something else ``from None``."""
    def load_dataset_stub(*args, **kwargs):
        try:
            raise ConnectionError("a mirror was unreachable; the hub answered")
        except ConnectionError:
            raise error from None
    return load_dataset_stub


OTHER_FAILURES = {
    "not found": (hfds.exceptions.DatasetNotFoundError("Dataset 'me/typo' doesn't exist on the Hub or cannot be "
                                                       "accessed."),
                  "Dataset 'me/typo' doesn't exist on the Hub or cannot be accessed."),
    "bad config": (ValueError("Config name is missing.\nPlease pick one among the available configs: ['a', 'b']"),
                   "Config name is missing."),
    "no message": (KeyError(), "KeyError"),
}


@pytest.mark.parametrize("kind", [*OTHER_FAILURES, "after a handled network error"])
def test_other_failures_keep_their_own_message(kind, monkeypatch):
    if kind == "after a handled network error":
        text = "Unknown split 'tset'. Should be one of ['train', 'test']."
        error = ValueError(text)
        monkeypatch.setattr(hfds, "load_dataset", _handled_network_error_then(error))
    else:
        error, text = OTHER_FAILURES[kind]
        monkeypatch.setattr(hfds, "load_dataset", _raising(error))
    with pytest.raises(DataError) as raised:
        load_dataset(DataConfig(dataset="hf:me/typo"))
    assert str(raised.value) == f"could not load hub dataset 'me/typo': {text}"
    assert "save_to_disk" not in str(raised.value) and "--data-root" not in str(raised.value)


def test_a_missing_hub_dataset_exits_2_with_its_own_message(monkeypatch, tiny_clip_dir, tmp_path):
    monkeypatch.setattr(hfds, "load_dataset", _raising(OTHER_FAILURES["not found"][0]))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "linear-head", "--model", str(tiny_clip_dir), "--dataset", "hf:me/typo",
                                 "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == ("error: could not load hub dataset 'me/typo': Dataset 'me/typo' "
                                               "doesn't exist on the Hub or cannot be accessed.")
    assert not out.exists()
