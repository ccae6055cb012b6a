"""``clipadapt demo``: the whole ladder offline, on the built-in world.

The world CLIP (``world:tiny``, pretrained on first use, about 4 minutes on 2 CPU cores, then cached) is adapted
with every registered method to a few-shot task it has never seen: the 16 colour-shape pairs held out of its
pretraining (``world:shapes-novel``, 8 images per class, labelled among all 48 classes). Then the finished runs are
combined: WiSE-FT of the LoRA run (with ``world:shapes-shifted`` as the shift) and an ensemble of the linear probe,
Tip-Adapter and LoRA. Then robustness to Gaussian noise, a speed and memory benchmark, and one report:
``runs/demo/report.html``. Last, captioning: the
world CLIP's frozen image tower with the world language model (``world:tiny-lm``) through the cross-attention bridge,
its decoder frozen or adapted with LoRA, on two-object scenes (``world:captions``), with their own report:
``runs/demo/captions/report.html``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clipadapt.engine.rundir import read_run_config
from clipadapt.experiments.compare import CompareConfig, CompareResult, run_compare
from clipadapt.experiments.report import build_report
from clipadapt.io import atomic_write_json
from clipadapt.reports.report import ReportResult

DEMO_MODEL = "world:tiny"
DEMO_DATASET = "world:shapes-novel"
DEMO_SHOTS = 8
# world:tiny has 2 layers per tower: maple's default depth (9 of CLIP's 12) does not fit it
# the methods with an iteration budget get the ten epochs the others train (8 shots x 48 classes, batch 32: 12 steps
# each), not their recipes' 500 x K (clip-lora) or 300 x K (2sfs): minutes each on 2 CPU cores
DEMO_SETTINGS = ["train.epochs=10", "train.patience=3", "baseline.classifier=world:tiny-resnet", "maple.depth=2",
                 "clip_lora.iterations=120", "two_stage_fs.iterations=120"]
DEMO_SIGMAS = [0.0, 0.05, 0.1, 0.2]
DEMO_WISE = ("lora", "world:shapes-shifted", [0.0, 0.25, 0.5, 0.75, 1.0])  # run, shift dataset, alphas
DEMO_ENSEMBLE = ["linear-probe", "tip-adapter", "lora"]
DEMO_CAPTION_METHODS = ["bridge-only", "lora"]
# the strongest bridge of docs/captioning.md, one epoch over the 2,000 training scenes (313 steps of each method) at
# a learning rate raised for so short a schedule: LoRA above the frozen decoder on seeds 0-2 (docs/captioning.md,
# "The demo"); one attention figure per run, the one the report shows
DEMO_CAPTION_BRIDGE = "cross-attention"
DEMO_CAPTION_SETTINGS = ["train.epochs=1", "bridge.lr=3e-3", "lora.lr=3e-3", "decode.max_new_tokens=16",
                         "run.attention_images=1"]


@dataclass
class DemoResult:
    compare: CompareResult
    report: ReportResult
    bench: Path
    captions: ReportResult | None = None


def run_demo(out_dir: str | Path = "runs/demo", model: str = DEMO_MODEL,
             say: Callable[[str], None] = lambda message: None, captions: bool = True) -> DemoResult:
    from clipadapt.classification.predictors import load_predictor
    from clipadapt.classification.robustness import evaluate_robustness
    from clipadapt.experiments.bench import run_bench
    from clipadapt.methods import list_methods

    out_dir = Path(out_dir)
    say(f"1/6 compare: zero-shot and {len(list_methods())} methods, {model} on {DEMO_DATASET} ({DEMO_SHOTS} shots)")
    config = CompareConfig(models=[model], dataset=DEMO_DATASET, shots=DEMO_SHOTS, overrides=list(DEMO_SETTINGS),
                           out=str(out_dir), overwrite=True, device="cpu")
    compare = run_compare(config, on_run=lambda run, status: say(f"    {run.method}: {status}"), report=False)
    say(f"2/6 combine: WiSE-FT of {DEMO_WISE[0]} (shift: {DEMO_WISE[1]}), ensemble of {', '.join(DEMO_ENSEMBLE)}")
    combined = combine_runs(compare.finished + compare.skipped, out_dir / "combined", say)
    say("3/6 robustness: Gaussian pixel noise, sigma " + ", ".join(f"{s:g}" for s in DEMO_SIGMAS))
    for run_dir in compare.finished + compare.skipped + combined:
        evaluate_robustness(load_predictor(run_dir, "cpu"), "gaussian", DEMO_SIGMAS, seed=0)
    say("4/6 bench: inference with and without gradients, and every method's training step")
    bench = run_bench([model], batch=32, methods=list_methods(), iterations=5, steps=2, device="cpu",
                      settings=DEMO_SETTINGS)
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
            out=str(out_dir / "captions"), overwrite=True)
        caption_report = run_caption_compare(caption_config, on_run=lambda run, status: say(f"    {run}: {status}")
                                             ).report
    return DemoResult(compare, report, bench_path, caption_report)


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
