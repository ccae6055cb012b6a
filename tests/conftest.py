"""Shared fixtures: an isolated cache, offline hub access, and a tiny random CLIP saved to disk."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["CLIPADAPT_PROGRESS"] = "0"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["COLUMNS"] = "200"  # rich tables are not wrapped in captured output
# module- and session-scoped fixtures run before the per-test home (isolated_home) is set: they get a home of the
# session's, never the user's ~/.cache/clipadapt (removed at the end, pytest_unconfigure)
_SESSION_HOME = tempfile.mkdtemp(prefix="clipadapt-tests-home-")
os.environ["CLIPADAPT_HOME"] = _SESSION_HOME
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (and in their subprocesses), or OpenMP's spinning
    # threads oversubscribe the cores and the suite runs slower in parallel than serially
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


FIRST = "tests/test_world_slow.py"  # builds the world, then runs the world tests and the demo (one unit of work)
LATE = ("tests/test_benchmark_slow.py", "tests/test_executors_slurm.py")  # need the world too: start once it is built


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The order of the files (a stable sort): under ``make test`` (pytest-xdist, by file, in this order) one worker
    builds world:tiny from the start and goes on to the world tests and the demo in the same file (FIRST), while the
    other runs the files holding slow tests; then the other files that need the world (LATE), once it is built; the
    files of quick tests last, to fill the tail: whichever worker is done first takes them instead of idling while
    the other ends a long file (with LATE at the very end, one worker took both LATE files, pytest-xdist handing a
    worker another file whenever it has two tests or fewer to go, and the other sat idle for minutes)."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return 0 if path == FIRST else 2 if path in LATE else 1 if path in slow else 3

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own $CLIPADAPT_HOME, so caches never leak between tests."""
    home = tmp_path_factory.mktemp("clipadapt-home")
    monkeypatch.setenv("CLIPADAPT_HOME", str(home))
    return home


@pytest.fixture
def figures_built_not_rasterised(monkeypatch):
    """Figures are built (every plotting path runs) but not rasterised to PNG: for the tests that train many tiny
    runs and read no figure, where rasterising the curves and the confusion matrix is about half of a run's time.
    tests/test_methods.py reads every method's curves.png and confusion.png."""
    from clipadapt.reports import plots

    monkeypatch.setattr(plots, "save_figure", lambda fig, path: None)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random transformers CLIP (hidden 64, 2 layers, hand-written char tokenizer) saved to disk."""
    from clipadapt.models.random_init import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("models") / "tiny-clip", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory) -> Path:
    """A tiny random transformers ResNet image classifier (the baseline method's stand-in for ResNet-18)."""
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=5)
    path = tmp_path_factory.mktemp("models") / "tiny-resnet"
    ResNetForImageClassification(config).save_pretrained(path)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tiny_clip_dir):
    from clipadapt.models import load_model

    return load_model(str(tiny_clip_dir))


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory) -> Path:
    from tests.helpers import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "colours", per_class=8)


@pytest.fixture(scope="session")
def four_colour_folder(tmp_path_factory) -> Path:
    """Four classes, so that base and new (CoOp's halves) have two each; six images per class."""
    from tests.helpers import FOUR_COLOURS, coloured_image

    root = tmp_path_factory.mktemp("four-colours")
    for name, colour in FOUR_COLOURS.items():
        (root / name).mkdir()
        for i in range(6):
            coloured_image(colour, (40, 30), seed=i).save(root / name / f"img_{i}.png")
    return root


@pytest.fixture(scope="session")
def world_home(tmp_path_factory) -> Path:
    """A $CLIPADAPT_HOME holding world:tiny, built once per test session with the default recipe.

    Under pytest-xdist the workers of one run share it (the world cache's file lock makes a second worker wait for
    the first one's build instead of building again)."""
    from clipadapt.world.models import world_clip_dir
    from tests.helpers import clipadapt_home

    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "world-home"
        shared.mkdir(exist_ok=True)
    else:
        shared = tmp_path_factory.mktemp("world-home")
    with clipadapt_home(shared) as home:
        world_clip_dir()
    return home


@pytest.fixture
def with_world(world_home, monkeypatch) -> Path:
    """Use the session's world:tiny (tests that need the pretrained world model are marked slow)."""
    monkeypatch.setenv("CLIPADAPT_HOME", str(world_home))
    return world_home


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 (2 layers, width 32) with the world tokenizer, saved to disk like a hub checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from clipadapt.world.tokenizer import build_world_tokenizer

    hf_logging.disable_progress_bar()
    tokenizer = build_world_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-lm"
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoded(tiny_bundle):
    """The tiny CLIP's tokens and pooled embeddings of three random images (what a captioner reads)."""
    import torch

    from clipadapt.captioning.encoder import image_tokens

    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, pooled = image_tokens(tiny_bundle, pixels)
    return {"tokens": tokens, "pooled": pooled}
