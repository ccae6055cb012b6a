"""Two processes that need the same feature-cache entry at once: one encodes, the other waits and reads it."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import torch

ENCODE_SECONDS = 1.5  # long enough that both processes ask before the first one has written


def _worker(model_dir: str, folder: str, home: str, barrier, out: str) -> None:
    import os
    import time

    os.environ["CLIPADAPT_HOME"] = home
    from clipadapt.data import DataConfig, load_dataset
    from clipadapt.engine import features
    from clipadapt.models import load_model

    real = features.encode_images

    def slow_encode(*args, **kwargs):
        time.sleep(ENCODE_SECONDS)
        return real(*args, **kwargs)

    features.encode_images = slow_encode
    bundle = load_model(model_dir, device="cpu")
    split = load_dataset(DataConfig(dataset=f"imagefolder:{folder}")).split("test")
    barrier.wait()
    encoded = features.encode_split(bundle, split, num_workers=0, cache=features.FeatureCache())
    torch.save({"features": encoded.features}, out + ".pt")
    Path(out).write_text(json.dumps({"from_cache": encoded.from_cache}))


def test_two_processes_encode_a_shared_entry_once(tiny_clip_dir, colour_folder, tmp_path):
    home = tmp_path / "home"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    outs = [str(tmp_path / f"out{i}.json") for i in range(2)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    processes = [context.Process(target=_worker, args=(str(tiny_clip_dir), str(colour_folder), str(home), barrier,
                                                       out)) for out in outs]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    flags = sorted(json.loads(Path(out).read_text())["from_cache"] for out in outs)
    assert flags == [False, True]  # one encoded, the other waited and read the file it wrote
    first, second = (torch.load(out + ".pt")["features"] for out in outs)
    assert torch.equal(first, second)
    entries = list((home / "features").rglob("*.safetensors"))
    assert len(entries) == 1 and not list((home / "features").rglob("*.tmp*"))
