"""``clipadapt demo``: the ladder offline, on the built-in world.

The world CLIP (``world:tiny``, pretrained on first use, about 4 minutes on one CPU thread, then cached) is adapted
to a few-shot task it has never seen: the 16 colour-shape pairs held out of its pretraining (``world:shapes-novel``,
8 images per class, labelled among all 48 classes), by zero-shot and one method of each family (``DEMO_METHODS``;
``full=True``, ``clipadapt demo --full``: every registered method and the ResNet baseline, the whole ladder). Then
the finished runs are combined: WiSE-FT of the LoRA run (with ``world:shapes-shifted`` as the shift) and an
ensemble of the linear probe, Tip-Adapter and LoRA. Then robustness to Gaussian noise, a speed and memory
benchmark, and one report: ``runs/demo/report.html``. Last, captioning: the world CLIP's frozen image tower with the
world language model (``world:tiny-lm``) through the cross-attention bridge, its decoder frozen or adapted with
LoRA, on two-object scenes (``world:captions``), with their own report: ``runs/demo/captions/report.html``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipadapt.config import override_section
from clipadapt.engine.rundir import read_run_config
from clipadapt.experiments.compare import CompareConfig, CompareResult, run_compare
from clipadapt.experiments.report import build_report
from clipadapt.io import atomic_write_json
from clipadapt.reports.report import ReportResult

DEMO_MODEL = "world:tiny"
DEMO_DATASET = "world:shapes-novel"
DEMO_SHOTS = 8
# one method of each family (README): weight-space (linear-probe, lora), prompts (coop on the text side, vpt on the
# image side), a few-shot cache (tip-adapter) and a closed form on cached features (gda); linear-probe, tip-adapter
# and lora are the ensemble's members. No baseline: it would build world:tiny-resnet (45 s) on a fresh clone.
DEMO_METHODS = ["linear-probe", "lora", "coop", "vpt", "tip-adapter", "gda"]
# the methods with an iteration budget of their own get about the steps the others train, not their recipes'
# 500 x K (clip-lora), 300 x K (2sfs) or 200 x K (clip-svd): minutes each on 2 CPU cores. coop keeps its recipe's
# 200 epochs at 8 shots (about 8 s on cached features): capped at 10, Dassl's SGD at 0.002 from a random context (its
# first epoch at 1e-5) left it below zero-shot (0.48 against 0.65, 2026-12-03)
DEMO_SETTINGS = ["train.epochs=10", "train.patience=3", "baseline.classifier=world:tiny-resnet",
                 "clip_lora.iterations=120", "two_stage_fs.iterations=120", "clip_svd.iterations=120"]
DEMO_SIGMAS = [0.0, 0.05, 0.1, 0.2]
DEMO_WISE = ("lora", "world:shapes-shifted", [0.0, 0.25, 0.5, 0.75, 1.0])  # run, shift dataset, alphas
DEMO_ENSEMBLE = ["linear-probe", "tip-adapter", "lora"]
DEMO_CAPTION_METHODS = ["bridge-only", "lora"]
# the strongest bridge of docs/captioning.md; n-gram metrics with the simple tokenizer (no Java, so the same numbers
# on every machine, and no METEOR: its JVM round trips took 10 s a run), CLIPScore by world:tiny itself (what the
# offline fallback gives anyway, without the warning); one attention figure per run, the one the report shows
DEMO_CAPTION_BRIDGE = "cross-attention"
DEMO_CAPTION_SETTINGS = ["decode.max_new_tokens=16", "decode.tokenizer=simple", "eval.clipscore_model=run",
                         "run.attention_images=1"]
# half an epoch over the 2,000 training scenes (157 steps of 32 pairs: the demo's cost, not searched), at each
# method's learning rate chosen on validation CIDEr-D over seeds 0-2 among 1e-3, 3e-3, 1e-2, 3e-2 (of everything it
# trains: the bridge and LoRA's adapters alike; benchmarks/demo_caption_search.py, docs/captioning.md "The demo")
DEMO_CAPTION_CHOSEN = {"bridge-only": ["train.steps=157", "bridge.lr=1e-2"],
                       "lora": ["train.steps=157", "bridge.lr=1e-2", "lora.lr=1e-2"]}


@dataclass
class DemoResult:
    compare: CompareResult
    report: ReportResult
    bench: Path
    captions: ReportResult | None = None
    methods: list[str] = field(default_factory=list)  # the adaptation methods it trained


def demo_methods(full: bool = False) -> list[str]:
    """The methods the demo trains: ``DEMO_METHODS``, or with ``full`` every registered method."""
    from clipadapt.methods import list_methods

    return list_methods() if full else list(DEMO_METHODS)


def demo_settings(methods: list[str]) -> list[str]:
    """``DEMO_SETTINGS`` for the sections these methods (and training) have: compare refuses the others."""
    from clipadapt.methods import METHODS

    sections = {"train"} | {METHODS.get(m).section for m in methods}
    return [item for item in DEMO_SETTINGS if override_section(item) in sections]


def run_demo(out_dir: str | Path = "runs/demo", model: str = DEMO_MODEL,
             say: Callable[[str], None] = lambda message: None, captions: bool = True,
             full: bool = False) -> DemoResult:
    from clipadapt.classification.predictors import load_predictor
    from clipadapt.classification.robustness import evaluate_robustness_of_runs
    from clipadapt.experiments.bench import run_bench

    out_dir = Path(out_dir)
    methods = demo_methods(full)
    settings = demo_settings(methods)
    say(f"1/6 compare: zero-shot and {len(methods)} methods{' (every registered one)' if full else ''}, {model} on "
        f"{DEMO_DATASET} ({DEMO_SHOTS} shots)")
    config = CompareConfig(models=[model], dataset=DEMO_DATASET, methods=methods, shots=DEMO_SHOTS,
                           overrides=settings, out=str(out_dir), overwrite=True, device="cpu")
    compare = run_compare(config, on_run=lambda run, status: say(f"    {run.method}: {status}"), report=False)
    say(f"2/6 combine: WiSE-FT of {DEMO_WISE[0]} (shift: {DEMO_WISE[1]}), ensemble of {', '.join(DEMO_ENSEMBLE)}")
    combined = combine_runs(compare.finished + compare.skipped, out_dir / "combined", say)
    say("3/6 robustness: Gaussian pixel noise, sigma " + ", ".join(f"{s:g}" for s in DEMO_SIGMAS))
    predictors = [load_predictor(run_dir, "cpu") for run_dir in compare.finished + compare.skipped + combined]
    evaluate_robustness_of_runs(predictors, "gaussian", DEMO_SIGMAS, seed=0)  # each noisy image made once
    say("4/6 bench: inference with and without gradients, and each method's training step")
    bench = run_bench([model], batch=32, methods=methods, iterations=5, steps=2, device="cpu", settings=settings)
    bench_path = out_dir / "bench" / "bench.json"
    atomic_write_json(bench_path, bench)
    say("5/6 report")
    report = build_report([out_dir], out_dir)
    caption_report = None
    if captions:
        from clipadapt.experiments.caption_compare import CaptionCompareConfig, run_caption_compare

        say(f"6/6 captioning: world:tiny + world:tiny-lm on world:captions, {DEMO_CAPTION_BRIDGE} bridge, "
            f"{', '.join(DEMO_CAPTION_METHODS)}")
        caption_config = CaptionCompareConfig(
            methods=DEMO_CAPTION_METHODS, bridges=[DEMO_CAPTION_BRIDGE],
            overrides=[f"model.spec={model}", "model.device=cpu", *DEMO_CAPTION_SETTINGS],
            method_overrides=DEMO_CAPTION_CHOSEN, out=str(out_dir / "captions"), overwrite=True)
        caption_report = run_caption_compare(caption_config, on_run=lambda run, status: say(f"    {run}: {status}")
                                             ).report
    return DemoResult(compare, report, bench_path, caption_report, methods)


def combine_runs(run_dirs: list[Path], out_dir: Path, say: Callable[[str], None]) -> list[Path]:
    """WiSE-FT of one finished run and an ensemble of three, as run directories under ``out_dir``; a method whose
    run failed is left out (and said)."""
    from clipadapt.experiments.ensemble import run_ensemble
    from clipadapt.experiments.wise import run_wise

    by_method = {read_run_config(d).get("method"): d for d in run_dirs}
    written = []
    method, shift, alphas = DEMO_WISE
    if method in by_method:
        result = run_wise(by_method[method], alphas, out_dir / f"wise-{method}", shift_dataset=shift, overwrite=True,
                          device="cpu")
        say(f"    WiSE-FT {method}: alpha {result['chosen_alpha']:g} chosen on val, test acc1 "
            f"{result['record']['metrics']['acc1']:.3f}")
        written.append(result["run_dir"])
    members = [by_method[m] for m in DEMO_ENSEMBLE if m in by_method]
    if len(members) < len(DEMO_ENSEMBLE):
        say(f"    ensemble: members missing ({', '.join(m for m in DEMO_ENSEMBLE if m not in by_method)})")
    if members:
        result = run_ensemble(members, out_dir / "ensemble", mode="val", overwrite=True, device="cpu")
        say(f"    ensemble of {len(members)}: test acc1 {result['record']['metrics']['acc1']:.3f}")
        written.append(result["run_dir"])
    return written
