"""How fast ``clipadapt app`` answers (issue 32): start-up, and a photo to all panels, for three runs on world:tiny
and on the random ViT-B/32-sized CLIP; and the install size of the ``app`` extra.

1. **Runs**: zero-shot, linear-probe and LoRA on world:shapes (``--shots`` per class, ``--epochs``), once with
   world:tiny and once with a random CLIP of ViT-B/32's geometry (``models.random_init``; the weights do not change
   the time).
2. **Start-up**: ``clipadapt.app(folder)`` (reads the runs, loads the first one for its example images) and
   ``launch`` until the page is served.
3. **Photo to panels**: ``/predict`` through ``gradio_client`` with the three runs selected (each run's top-5 and
   its saliency map): the first call (it loads the other runs) and the median of ``--repeats`` calls after it.
4. **Install size**: the files of the distributions the extra adds to clipadapt's own (gradio's requirement closure
   minus the base closure), read from this environment's metadata.

Run: ``python benchmarks/app.py [--out DIR]``; writes ``app.json`` and ``app.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPADAPT_PROGRESS", "0")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import clipadapt  # noqa: E402
from common import header  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_runs(model: str, root: Path, shots: int, epochs: int) -> Path:
    data = "world:shapes"
    clipadapt.zeroshot(model, data, out=root / "zeroshot", progress=False)
    for method in ("linear-probe", "lora"):
        clipadapt.train(method, model, data, shots=shots, epochs=epochs, out=root / method, progress=False)
    return root


def measure(folder: Path, photo: Path, repeats: int) -> dict:
    from gradio_client import Client, handle_file

    from clipadapt.webapp.page import _names, launch

    start = time.perf_counter()
    page = clipadapt.app(folder)
    built = time.perf_counter() - start
    url = launch(page, free_port(), block=False, quiet=True)
    started = time.perf_counter() - start
    client = Client(url, verbose=False)
    names = _names(page.clipadapt_panels)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        answers = client.predict(handle_file(str(photo)), names, "", "", api_name="/predict")
        times.append(time.perf_counter() - t)
        assert all(answers), answers
    page.close()
    return {"runs": names, "build_s": round(built, 2), "startup_s": round(started, 2),
            "first_photo_s": round(times[0], 2), "photo_s": round(statistics.median(times[1:]), 3)}


def requirement_closure(name: str, extra: str | None = None) -> set[str]:
    """The distributions ``name`` (with ``extra``) requires here, recursively (markers of other extras skipped)."""
    seen: set[str] = set()
    todo = [(name, extra)]
    while todo:
        current, wanted = todo.pop()
        key = current.lower().replace("_", "-")
        if key in seen and wanted is None:
            continue
        try:
            dist = metadata.distribution(current)
        except metadata.PackageNotFoundError:
            continue
        seen.add(key)
        for requirement in dist.requires or []:
            marker = requirement.split(";", 1)[1] if ";" in requirement else ""
            if "extra" in marker and not (wanted and f'"{wanted}"' in marker):
                continue
            todo.append((re.split(r"[ ;<>=!~\[(]", requirement.strip(), maxsplit=1)[0], None))
    return seen


def size_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
    return round(total / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import tempfile

    from clipadapt.models.random_init import save_random_clip

    work = Path(tempfile.mkdtemp(prefix="clipadapt-bench-app-"))  # the world comes from $CLIPADAPT_HOME (built once)
    b32 = save_random_clip(work / "vit-b-32", preset="vit-b-32")
    from clipadapt.data import DataConfig, load_dataset

    results = {}
    for label, model in (("world:tiny", "world:tiny"), ("random ViT-B/32", str(b32))):
        folder = make_runs(model, work / label.replace("/", "-").replace(":", "-"), args.shots, args.epochs)
        split = load_dataset(DataConfig(dataset="world:shapes")).split("test")
        photo = work / "photo.png"
        split.load(0).save(photo)
        results[label] = measure(folder, photo, args.repeats)
        print(label, results[label], flush=True)
    base = requirement_closure("clipadapt")
    added = requirement_closure("gradio") - base
    record = {**header(shots=args.shots, epochs=args.epochs, repeats=args.repeats), "models": results,
              "extra": {"distributions": len(added), "size_mb": size_mb(added),
                        "gradio": metadata.version("gradio")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "app.json").write_text(json.dumps(record, indent=2))
    lines = [f"# clipadapt app ({record['date']}, {record['machine']}, torch {record['torch']})", "",
             "| model | runs | start-up s | first photo s | photo to all panels s (median) |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {len(r['runs'])} | {r['startup_s']} | {r['first_photo_s']} | {r['photo_s']} |"
              for label, r in results.items()]
    lines += ["", f"`clipadapt[app]` adds {len(added)} distributions, {record['extra']['size_mb']} MB "
              f"(gradio {record['extra']['gradio']})."]
    (args.out / "app.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
