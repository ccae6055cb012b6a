"""``clipadapt caption ...``: train, evaluate, compare and explain captioners (CLIP encoder + language decoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clipadapt.cli.common import (
    DeviceOpt,
    SetOpt,
    notice,
    number_list,
    out,
    print_failed,
    result_table,
    setup_logging,
    user_errors,
)
from clipadapt.errors import RunInterrupted

caption_app = typer.Typer(no_args_is_help=True, help="Image captioning: a frozen CLIP image tower, a trained bridge "
                                                     "and a causal language model adapted with PEFT.")
METRICS = [("cider", "CIDEr"), ("bleu4", "BLEU-4"), ("meteor", "METEOR"), ("rouge_l", "ROUGE-L"),
           ("clip_score", "CLIPScore"), ("ref_clip_score", "RefCLIPScore")]

ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="CLIP model whose image tower encodes")]
DecoderOpt = Annotated[str | None, typer.Option(help="causal LM: gpt2, a folder, or world:tiny-lm")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="coco:FILE.json|FOLDER, karpathy:FILE.json, "
                                                                        "flickr8k, flickr30k, coco-karpathy, "
                                                                        "hf-captions:ORG/NAME, world:captions")]
ImageRootOpt = Annotated[str | None, typer.Option(help="folder the annotation's image paths are relative to")]
DataRootOpt = Annotated[str | None, typer.Option(help="local copy of a hub caption dataset")]
BridgeOpt = Annotated[str | None, typer.Option(help="patch-prefix, cross-attention or mapper")]


def _metric(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def metric_row(metrics: dict) -> list[str]:
    return [_metric(metrics.get(key)) for key, _ in METRICS]


def scorer_line(record: dict) -> None:
    """The line under a table that names who scored CLIPScore."""
    from clipadapt.captioning.scoring import scorer_note

    out.print(scorer_note(record.get("clipscore"), record.get("model", "?")), highlight=False)


def _command(name: str):
    def wrap(func):
        caption_app.command(name)(user_errors(func))
        return func

    return wrap


@_command("methods")
def methods_command(
    pattern: Annotated[str | None, typer.Argument(help="shell pattern, e.g. 'l*'")] = None,
    shared: Annotated[bool, typer.Option(help="also list every shared section (model, decoder, data, train, "
                                              "decode, eval, run)")] = False,
):
    """List the decoder adaptation methods with their settings and defaults, then the bridge's (every method trains
    it); set them with --set SECTION.KEY=VALUE."""
    from clipadapt.api import caption_methods
    from clipadapt.captioning.listing import shared_sections
    from clipadapt.captioning.methods import CAPTION_METHODS
    from clipadapt.cli.listing import package_note, settings_table

    for row in caption_methods(pattern):
        out.print(settings_table(f"{row['name']}: {row['description']}{package_note(row)}", row["section"],
                                 CAPTION_METHODS.get(row["name"]).config_cls))
    sections = shared_sections()
    bridge = sections.pop("bridge")
    out.print(settings_table("bridge: trained by every method (with the method's optimizer and momentum)", "bridge",
                             bridge))
    if shared:
        for name, config_class in sections.items():
            out.print(settings_table(f"{name} (every method)", name, config_class))
    else:
        out.print(f"Shared sections: {', '.join(f'{name}.*' for name in sections)} (`clipadapt caption methods "
                  "--shared` lists them)", highlight=False)


@_command("train")
def train_command(
    method: Annotated[str, typer.Argument(help="decoder method (see `clipadapt caption methods`)")],
    model: ModelOpt = None,
    decoder: DecoderOpt = None,
    dataset: DatasetOpt = None,
    bridge: BridgeOpt = None,
    config: Annotated[Path | None, typer.Option(help="YAML config (e.g. a run's config.yaml)")] = None,
    set_: SetOpt = None,
    seed: Annotated[int | None, typer.Option(help="seed of initialisation and shuffling")] = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs (train.epochs)")] = None,
    select: Annotated[str | None, typer.Option(help="model selection on validation: loss or cider")] = None,
    image_root: ImageRootOpt = None,
    data_root: DataRootOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="run directory")] = None,
    resume: Annotated[bool, typer.Option(help="continue the interrupted run in --out")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory")] = False,
    device: DeviceOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
):
    """Train a captioner; selected on validation, the test split captioned once and scored."""
    setup_logging(verbose)
    import json

    from clipadapt.captioning.api import train
    from clipadapt.config import given

    settings = given({"data.image_root": image_root, "data.root": data_root})
    try:
        run = train(method, model, decoder, dataset, bridge, seed, out_dir, epochs=epochs, select=select,
                    resume=resume, overwrite=overwrite, device=device, config=config, overrides=set_ or [],
                    **settings)
    except RunInterrupted as interrupted:
        notice(f"interrupted; continue with: clipadapt caption train {method} --out {interrupted.run_dir} --resume")
        raise typer.Exit(130) from None
    if not run.main_process:
        return
    record = run.record
    predictions = json.loads((run.dir / "predictions.json").read_text())
    row = [record["method"], record["bridge"], *metric_row(record["metrics"]), f"{record['params']['trainable']:,}",
           f"{record['cost']['train_time_s']:.1f} s"]
    out.print(result_table(["method", "bridge", *[n for _, n in METRICS], "trainable params", "train time"], [row],
                           names=2, title=f"{record['model']} + {record['decoder']} on {record['dataset']} "
                                          f"(test, {len(predictions)} images)"))
    scorer_line(record)
    for line in record.get("skipped_metrics", []):
        notice("skipped", line)
    out.print(f"run directory: {run.dir}", highlight=False)


@_command("eval")
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished caption run directory")],
    split: Annotated[str, typer.Option(help="split to caption: test, val (or train)")] = "test",
    beam: Annotated[int | None, typer.Option(help="beam width (default: the run's decode.beams)")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="longest caption in tokens")] = None,
    clipscore_model: Annotated[str | None, typer.Option(help="CLIP that scores CLIPScore (a hub id, a folder, "
                                                             "world:tiny or run); with the run's decoding the saved "
                                                             "captions are scored again, not decoded")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="another decoding: decode.KEY=VALUE, repeatable (e.g. decode.no_repeat_ngram_size=2)")] = None,
    device: DeviceOpt = None,
):
    """Caption a split again with a run's weights (its decoding, or another with --set decode.*; or score its saved
    captions with another CLIP); prints the metrics, writes eval_<split><decoding>.json, its predictions and its
    best/worst figure (the names say which decoding and scorer made them)."""
    setup_logging()
    from clipadapt.captioning.api import evaluate

    result = evaluate(run_dir, split, beam, max_new_tokens, device, clipscore_model, overrides=set_ or [])
    row = [run_dir, result["method"], result["bridge"], split, result["decode"]["beams"], result["images"],
           *metric_row(result["metrics"])]
    out.print(result_table(["run", "method", "bridge", "split", "beams", "images", *[n for _, n in METRICS]], [row],
                           names=3, title=f"{split} captions" + (f" (scored again from {result['rescored']})"
                                                                 if result.get("rescored") else "")))
    scorer_line(result)
    for line in result.get("skipped_metrics", []):
        notice("skipped", line)
    out.print(f"predictions: {run_dir / result['predictions']}", highlight=False)


@_command("predict")
def predict_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished caption run directory")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    attention: Annotated[bool, typer.Option(help="draw one attention map per generated word")] = False,
    layer: Annotated[str | None, typer.Option(help="decoder layer of the maps: a number (negative from the "
                                                   "end), mean (over layers; default) or all (row per layer)")] = None,
    beam: Annotated[int | None, typer.Option(help="beam width")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="folder for the attention figures")] = None,
    strict: Annotated[bool, typer.Option(help="fail on an unreadable image instead of skipping it")] = False,
    device: DeviceOpt = None,
):
    """Caption your own images (with --attention: a figure per image, one panel per word)."""
    setup_logging()
    from clipadapt.captioning.api import caption

    results = caption(run_dir, images, attention, out_dir, layer, beam, device, strict)
    bad = [r for r in results if "error" in r]
    rows = [[r["file"], r["caption"], r.get("attention", "")] for r in results if "error" not in r]
    out.print(result_table(["image", "caption", "attention figure"], rows, text=[1, 2]))
    for r in bad:
        notice("skipped", f"{r['file']}: {r['error']}")


@_command("compare")
def compare_command(
    methods: Annotated[str, typer.Option(help="comma-separated decoder methods, or all")] = "all",
    bridges: Annotated[str, typer.Option(help="comma-separated bridges")] = "patch-prefix",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0",
    model: ModelOpt = None,
    decoder: DecoderOpt = None,
    dataset: DatasetOpt = None,
    image_root: ImageRootOpt = None,
    data_root: DataRootOpt = None,
    set_: SetOpt = None,
    epochs: Annotated[int | None, typer.Option(help="maximum epochs of every run")] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder of the runs and the report")] = Path(
        "runs/caption-compare"),
    skip_existing: Annotated[bool, typer.Option(help="keep finished runs, resume interrupted ones")] = False,
    overwrite: Annotated[bool, typer.Option(help="retrain runs that exist")] = False,
    device: DeviceOpt = None,
):
    """Train every method x bridge x seed as its own run, then write report.md and report.html."""
    setup_logging()
    from clipadapt.api import compare_captions
    from clipadapt.captioning.scoring import scorer_label
    from clipadapt.config import given

    result = compare_captions(methods, bridges, number_list(seeds, "--seeds"), model, decoder, dataset, out_dir,
                              epochs=epochs, skip_existing=skip_existing, overwrite=overwrite, device=device,
                              overrides=set_ or [], on_run=lambda label, status: notice(f"{label}:", status, "bold"),
                              **given({"data.image_root": image_root, "data.root": data_root}))
    rows = [[row.label, ",".join(map(str, row.seeds)),
             *[_metric(row.stat("metrics", key)[0] if row.values("metrics", key) else None) for key, _ in METRICS],
             f"{row.stat('params', 'trainable')[0]:,.0f}"] for row in result.report.rows]
    scorers = sorted({scorer_label(run.record.get("clipscore"), run.model) for row in result.report.rows
                      for run in row.runs})
    out.print(result_table(["method (bridge)", "seeds", *[n for _, n in METRICS], "trainable params"], rows,
                           title=f"caption comparison (test, mean over seeds; CLIPScore by {', '.join(scorers)})"))
    out.print(f"report: {result.report.markdown} ({result.report.html})", highlight=False)
    print_failed(result.failed)
    if result.failed:
        raise typer.Exit(1)


@_command("report")
def report_command(
    paths: Annotated[list[Path], typer.Argument(help="caption run directories or folders holding them")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where report.md and report.html go")] = Path("."),
):
    """report.md and report.html from existing caption runs."""
    setup_logging()
    from clipadapt.api import report

    result = report(list(paths), out_dir, task="captioning")
    out.print(f"report: {result.markdown} ({result.html})", highlight=False)
