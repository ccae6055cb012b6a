"""``clipadapt cache``: the feature caches listed by kind, model and split; a read marks an entry used; pruning by
age, by size (least recently used first) and clearing, never an entry another process holds."""

from __future__ import annotations

import fcntl
import json
import os
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import clipadapt
from clipadapt.cli import app
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.cachedir import cache_entries, parse_size
from clipadapt.engine.features import FeatureCache, encode_split
from clipadapt.paths import feature_cache_dir

runner = CliRunner()
DAY = 86400


def views_entry(name, model="world:tiny", size=4096):
    folder = feature_cache_dir() / "views" / name
    folder.mkdir(parents=True)
    np.save(folder / "views.npy", np.zeros(size // 2, dtype=np.float16))
    (folder / "meta.json").write_text(json.dumps({"model": model, "split": "train"}))
    return folder


def caption_entry(name, model="world:tiny", values=512):
    path = feature_cache_dir() / "captioning" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"tokens": torch.zeros(values)}, str(path), metadata={"model": model, "split": "val"})
    return path


def aged(path, days):
    when = time.time() - days * DAY
    os.utime(path / "meta.json" if path.is_dir() else path, (when, when))


@pytest.fixture
def encoded_entry(tiny_bundle, colour_folder):
    split = load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}")).split("test")
    encode_split(tiny_bundle, split, num_workers=0, cache=FeatureCache())
    (path,) = feature_cache_dir().glob("*.safetensors")
    return tiny_bundle, split, path


def test_entries_are_listed_by_kind_model_and_split_and_a_read_marks_one_used(encoded_entry):
    bundle, split, path = encoded_entry
    views_entry("a" * 24)
    caption_entry("b" * 24)
    info = clipadapt.cache()
    assert {k: v["entries"] for k, v in info["kinds"].items()} == {"features": 1, "views": 1, "captions": 1}
    by_kind = {e["kind"]: e for e in info["entries"]}
    assert by_kind["features"]["model"] == bundle.spec and by_kind["features"]["split"] == "test"
    assert by_kind["views"]["model"] == "world:tiny" and by_kind["captions"]["split"] == "val"
    assert by_kind["features"]["bytes"] == path.stat().st_size
    assert info["bytes"] == sum(e["bytes"] for e in info["entries"])
    assert clipadapt.cache(["views"])["kinds"] == {"views": {"entries": 1, "bytes": by_kind["views"]["bytes"]}}
    models = {m["model"]: m for m in info["models"]}
    assert models["world:tiny"]["entries"] == {"views": 1, "captions": 1}
    assert models[bundle.spec]["bytes"] == path.stat().st_size

    aged(path, 10)
    hit = encode_split(bundle, split, num_workers=0, cache=FeatureCache())
    assert hit.from_cache and time.time() - path.stat().st_mtime < 60  # read now: its last use is now


def test_prune_by_age_then_by_size_least_recently_used_first():
    paths = {}
    for i, days in enumerate([0, 1, 5, 30, 60]):  # caption entries of one size, used 0 to 60 days ago
        paths[days] = caption_entry(f"{i:024d}")
        aged(paths[days], days)
        paths[days].with_name(paths[days].name + ".lock").touch()
    size = paths[0].stat().st_size

    preview = clipadapt.prune_cache(older_than_days=20, dry_run=True)
    assert preview["dry_run"] and len(preview["removed"]) == 2 and all(p.exists() for p in paths.values())

    result = clipadapt.prune_cache(older_than_days=20)
    assert sorted(r["path"] for r in result["removed"]) == sorted(str(paths[d]) for d in (30, 60))
    assert not paths[30].exists() and not paths[30].with_name(paths[30].name + ".lock").exists()
    assert result["freed_bytes"] == 2 * size and result["kept"] == 3

    result = clipadapt.prune_cache(max_size=2 * size + 1)  # room for two: the two most recently used stay
    assert [r["path"] for r in result["removed"]] == [str(paths[5])]
    assert [e.path for e in cache_entries()] == [paths[0], paths[1]]

    assert clipadapt.prune_cache(clear=True, kinds=["views"])["removed"] == []  # another kind: nothing
    assert len(clipadapt.prune_cache(clear=True)["removed"]) == 2 and cache_entries() == []


def test_an_entry_in_use_is_kept():
    busy, idle = caption_entry("c" * 24), caption_entry("d" * 24)
    with open(str(busy) + ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a process encoding it holds it
        result = clipadapt.prune_cache(clear=True)
    assert [r["path"] for r in result["in_use"]] == [str(busy)] and busy.exists()
    assert [r["path"] for r in result["removed"]] == [str(idle)] and not idle.exists()


def test_the_listing_reads_the_folders_the_caches_write():
    from clipadapt.captioning.encoder import EncoderCache
    from clipadapt.engine.cachedir import SUBFOLDERS
    from clipadapt.engine.views import ViewCache

    assert {"views": ViewCache.folder, "captions": EncoderCache.folder} == SUBFOLDERS and FeatureCache.folder == ""


def test_sizes_parse_and_bad_input_is_one_line_exit_2():
    assert parse_size("5GB") == 5 * 1024 ** 3 and parse_size("1.5 mb") == int(1.5 * 1024 ** 2)
    assert parse_size("44.0 KiB") == 44 * 1024  # what format_bytes prints reads back
    assert parse_size("123") == 123 and parse_size("2k") == 2048
    entry = caption_entry("e" * 24)
    for args, message in [(["--max-size", "lots"], "bad size 'lots'; give a number with an optional unit"),
                          (["--clear", "--kind", "weights"], "unknown cache kind 'weights'; valid choices: "
                                                             "features, views, captions"),
                          (["--dry-run"], "--dry-run goes with --older-than, --max-size or --clear"),
                          (["--older-than", "-1"], "--older-than must be 0 days or more, got -1.0")]:
        result = runner.invoke(app, ["cache", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) <= 2, result.output
    assert entry.exists()  # nothing removed by a refused command
    with pytest.raises(clipadapt.ConfigError, match="say what to prune"):
        clipadapt.prune_cache()


def test_the_command_lists_and_prunes():
    caption_entry("f" * 24, model="my-model")
    listing = runner.invoke(app, ["cache"])
    assert listing.exit_code == 0 and "my-model" in listing.output and "1 captions" in listing.output
    pruned = runner.invoke(app, ["cache", "--clear"])
    assert pruned.exit_code == 0 and "removed 1 entries" in pruned.output and cache_entries() == []
