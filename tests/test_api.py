"""The public Python API against its commands: the same runs, the same errors, plug-ins from Python and from an
installed package's entry points."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import clipadapt
from clipadapt import registry
from clipadapt.cli import app
from tests.helpers import COLOURS, coloured_image

runner = CliRunner()
SETTINGS = {"data": {"num_workers": 0}, "run.samples": 0, "train": {"epochs": 2, "batch_size": 4}}
CLI_SETTINGS = ["--set", "data.num_workers=0", "--set", "run.samples=0", "--set", "train.epochs=2",
                "--set", "train.batch_size=4"]


def comparable(record: dict) -> dict:
    """What must agree between two runs of the same arguments (not where they were written, nor how long)."""
    config = {k: v for k, v in record["config"].items() if k != "run"}
    run = {k: v for k, v in record["config"]["run"].items() if k != "out"}
    return {"metrics": record["metrics"], "params": record["params"], "config": config, "run": run,
            "selection": record.get("selection"), "best_epoch": record.get("best_epoch")}


def test_train_from_python_is_the_command(tiny_clip_dir, colour_folder, tmp_path):
    run = clipadapt.train("lora", str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=tmp_path / "python",
                          device="cpu", lora={"r": 2}, **SETTINGS)
    result = runner.invoke(app, ["train", "lora", "--model", str(tiny_clip_dir), "--dataset",
                                 f"imagefolder:{colour_folder}", "--device", "cpu", "--out", str(tmp_path / "cli"),
                                 "--set", "lora.r=2", *CLI_SETTINGS])
    assert result.exit_code == 0, result.output
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert comparable(run.record) == comparable(cli)
    assert run.config["lora"]["r"] == 2 and run.metrics == cli["metrics"]
    history = run.history
    assert list(history["epoch"]) == [1, 2] and history["val_acc"].between(0, 1).all()
    assert repr(run).startswith(f"Run('{tmp_path / 'python'}', lora, acc1 ")
    html = run._repr_html_()
    assert "<table>" in html and "data:image/png;base64," in html  # the table and the training curve inline


def test_zeroshot_from_python_is_the_command(tiny_clip_dir, colour_folder, tmp_path):
    run = clipadapt.zeroshot(str(tiny_clip_dir), f"imagefolder:{colour_folder}", ["simple", "clip"],
                             out=tmp_path / "python", device="cpu", data={"num_workers": 0})
    result = runner.invoke(app, ["zeroshot", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}",
                                 "-t", "simple", "-t", "clip", "--device", "cpu", "--out", str(tmp_path / "cli"),
                                 "--set", "data.num_workers=0"])
    assert result.exit_code == 0, result.output
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert run.record["templates"] == cli["templates"] and run.record["best_template_set"] == cli["best_template_set"]
    assert comparable(run.record)["config"] == comparable(cli)["config"]


def test_load_run_predicts_what_the_command_prints(tiny_clip_dir, colour_folder, tmp_path):
    clipadapt.train("linear-probe", str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=tmp_path / "run",
                    device="cpu", progress=False, **SETTINGS)
    image = tmp_path / "red.png"
    coloured_image(COLOURS["red"], (40, 40), seed=3).save(image)
    run = clipadapt.load_run(tmp_path / "run")
    from_path = run.predict(image, top_k=2)
    from_pil = run.predict([Image.open(image)], top_k=2)
    assert from_path == from_pil and len(from_path[0]) == 2
    assert sum(from_path[0].values()) <= 1 + 1e-6 and list(from_path[0].values()) == sorted(
        from_path[0].values(), reverse=True)
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(image), "--topk", "2", "--out",
                                 str(tmp_path / "charts")])
    assert result.exit_code == 0, result.output
    for name, probability in from_path[0].items():
        assert f"{name} {probability:.3f}" in result.output
    assert run.report().is_file()


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda d, f, o: clipadapt.train("lorra", d, f, out=o), clipadapt.UnknownNameError, "unknown method 'lorra'"),
    (lambda d, f, o: clipadapt.train("lora", d, f, out=o, lora={"rank": 4}), clipadapt.ConfigError,
     "unknown config key 'lora.rank'"),
    (lambda d, f, o: clipadapt.train("lora", d, f, out=o, lora={"r": "four"}), clipadapt.ConfigError, "lora.r"),
    (lambda d, f, o: clipadapt.zeroshot(d, "flowers103", out=o), clipadapt.UnknownNameError,
     "unknown dataset 'flowers103'"),
    (lambda d, f, o: clipadapt.load_run(f), clipadapt.ClipAdaptError, "is not a run directory"),
])
def test_bad_settings_raise_one_line_errors_and_write_nothing(call, error, message, tiny_clip_dir, colour_folder,
                                                              tmp_path):
    with pytest.raises(error, match=message) as caught:
        call(str(tiny_clip_dir), f"imagefolder:{colour_folder}", tmp_path / "run")
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()


def test_the_captioning_twins_are_reached_from_the_package():
    code = ("import clipadapt; print(clipadapt.captioning.train.__module__, clipadapt.methods()[0]['name'], "
            "callable(clipadapt.models))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.split() == ["clipadapt.captioning.api", "2sfs", "True"]  # methods in name order


def test_listings_are_data():
    methods = {row["name"]: row for row in clipadapt.methods()}
    assert methods["lora"]["section"] == "lora" and methods["lora"]["settings"]["r"] == 8
    assert methods["lora"]["package"] is None  # clipadapt's own
    assert {"world:tiny", "ViT-B/32"} <= {row["name"] for row in clipadapt.models()}
    assert {row["usage"] for row in clipadapt.datasets("imagef*")} == {"imagefolder:PATH"}
    assert clipadapt.template_sets("simple")[0]["templates"] == ["a photo of a {}."]


PLUGIN = '''
from dataclasses import dataclass

import torch
from torch import nn

import clipadapt
from clipadapt.config import option
from clipadapt.methods import Method, MethodConfig


@dataclass
class ScaleConfig(MethodConfig):
    lr: float = option(1e-2, help="peak learning rate")


@clipadapt.register_method("{name}", ScaleConfig)
class Scale(Method):
    """A learned scale per class on the zero-shot head's logits."""

    inputs = "features"

    def __init__(self, bundle, classnames, config, templates) -> None:
        super().__init__(bundle, classnames, config, templates)
        self.scale = nn.Parameter(torch.ones(len(classnames)))

    def classify(self, inputs):
        return self.head(inputs) * self.scale
'''


@pytest.fixture
def clean_registries(monkeypatch):
    """Plug-ins registered by a test are gone after it."""
    from clipadapt.methods import METHODS

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(METHODS, "_help", dict(METHODS._help))
    monkeypatch.setattr(METHODS, "_origin", dict(METHODS._origin))
    monkeypatch.setattr(registry, "_LOADED", set(registry._LOADED))


def test_a_method_registered_from_python_trains_and_is_listed(clean_registries, tiny_clip_dir, colour_folder,
                                                               tmp_path):
    namespace: dict = {}
    exec(PLUGIN.format(name="scale-python"), namespace)  # what a notebook cell does
    run = clipadapt.train("scale-python", str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=tmp_path / "run",
                          device="cpu", **SETTINGS)
    assert run.record["method"] == "scale-python" and run.record["params"]["trainable"] > 0
    listed = runner.invoke(app, ["methods", "scale-*"])
    assert listed.exit_code == 0 and "scale-python: A learned scale per class" in listed.output
    with pytest.raises(clipadapt.NameTakenError, match="method 'scale-python' is already registered"):
        exec(PLUGIN.format(name="scale-python"), {})


def test_a_method_from_an_installed_package_is_found_by_its_entry_point(tmp_path, tiny_clip_dir, colour_folder):
    """A distribution on sys.path (what pip install leaves: the module and a dist-info with entry_points.txt)."""
    site = tmp_path / "site"
    (site / "my_scale_plugin").mkdir(parents=True)
    (site / "my_scale_plugin" / "__init__.py").write_text(PLUGIN.format(name="scale-entry"))
    info = site / "my_scale_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-scale-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[clipadapt.methods]\nscale = my_scale_plugin\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        import clipadapt
        assert "my_scale_plugin" not in sys.modules  # found at start-up, imported on the first lookup
        row = next(r for r in clipadapt.methods() if r["name"] == "scale-entry")
        print(row["package"])
        run = clipadapt.train("scale-entry", {str(tiny_clip_dir)!r}, "imagefolder:{colour_folder}",
                              out={str(tmp_path / "run")!r}, device="cpu", progress=False, data={{"num_workers": 0}},
                              run={{"samples": 0}}, train={{"epochs": 1, "batch_size": 4}})
        print(run.record["method"])
        from typer.testing import CliRunner
        from clipadapt.cli import app
        print(CliRunner().invoke(app, ["methods", "scale-*"]).output)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["my-scale-plugin", "scale-entry"]
    assert "scale-entry: A learned scale per class on the zero-shot head's logits. [my-scale-plugin]" in \
        " ".join(result.stdout.split())


@pytest.mark.slow
def test_the_public_module_type_checks():
    package = Path(clipadapt.__file__).parent
    assert (package / "py.typed").is_file()
    result = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
                             "--no-incremental", str(package / "api")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_the_quickstart_notebook_is_stored_without_outputs():
    notebook = json.loads(QUICKSTART.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)


def test_drawing_leaves_the_users_matplotlib_backend_alone(tmp_path):
    """A notebook's inline plots keep working after clipadapt has drawn (it used to force Agg on import)."""
    code = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        from clipadapt.reports import plots
        plots.plot_lines([{{"x": [1, 2], "y": [0.5, 0.7], "label": "a"}}], {str(tmp_path / "a.png")!r}, "x", "y", "t")
        import matplotlib.pyplot as plt
        print(matplotlib.get_backend(), len(plt.get_fignums()))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "0"] and (tmp_path / "a.png").stat().st_size > 1000


def test_the_package_re_exports_exactly_the_api():
    """clipadapt/__init__.py lists the lazy names by hand (importing clipadapt.api there would load it eagerly)."""
    import clipadapt.api as api

    errors = {"ClipAdaptError", "ConfigError", "DataError", "NameTakenError", "UnknownNameError"}
    assert set(clipadapt._API) == set(api.__all__) - errors
    assert set(clipadapt.__all__) == set(api.__all__) | {"__version__"}
    assert all(callable(getattr(clipadapt, name)) for name in clipadapt._API)


def test_a_sweep_grid_from_python_values_names_its_cells_as_the_command_line(tiny_clip_dir, colour_folder, tmp_path):
    common = {"model": str(tiny_clip_dir), "dataset": f"imagefolder:{colour_folder}", "device": "cpu",
              "epochs": 1, "progress": False, **SETTINGS}
    python = clipadapt.sweep("linear-head", {"linear_head.lr": [0.01, 0.1]}, out=tmp_path / "python", **common)
    typed = clipadapt.sweep("linear-head", ["linear_head.lr=0.01,0.1"], out=tmp_path / "typed", **common)
    assert [row["label"] for row in python.rows] == [row["label"] for row in typed.rows]
    assert [row["values"] for row in python.rows] == [{"linear_head.lr": "0.01"}, {"linear_head.lr": "0.1"}]
    assert [row["val_acc"] for row in python.rows] == [row["val_acc"] for row in typed.rows]
