"""The layers hold (docs/architecture.md): import-linter's contracts in pyproject.toml pass on the package, they
fail on a copy of it with one import that runs back up, no module imports itself back through others, and the world
reaches the registries only as a plug-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipadapt import registry
from clipadapt.registry import Registry, add_plugin, load_plugins

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "clipadapt"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# A grimp graph of the package found first on sys.path, its strongly connected components of more than one module.
CYCLES_SCRIPT = textwrap.dedent("""
    import sys
    import grimp
    graph = grimp.build_graph("clipadapt", include_external_packages=False, exclude_type_checking_imports=True,
                               cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = len(index); stack.append(v); on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop(); on_stack.discard(w); component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for module in sorted(edges):
        if module not in index:
            visit(module)
    print(len(graph.modules))
    for component in found:
        print(" ".join(component))
""")


def _env(pythonpath: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def lint_imports(pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """import-linter with the project's contracts, on the package (or on the copy under ``pythonpath``)."""
    return subprocess.run([str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          env=_env(pythonpath), capture_output=True, text=True, timeout=300)


def import_cycles(pythonpath: Path | None = None) -> tuple[int, list[str]]:
    result = subprocess.run([sys.executable, "-c", CYCLES_SCRIPT], cwd=ROOT, env=_env(pythonpath),
                            capture_output=True, text=True, timeout=300, check=True)
    lines = result.stdout.splitlines()
    return int(lines[0]), lines[1:]


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the package on its own sys.path entry; tests add one import to it."""
    shutil.copytree(PACKAGE, tmp_path / "clipadapt", ignore=shutil.ignore_patterns("__pycache__"))

    def add_import(module: str, statement: str) -> Path:
        path = tmp_path / "clipadapt" / module
        path.write_text(path.read_text() + f"\n{statement}  # noqa\n")
        return tmp_path

    return add_import


def test_the_layer_contracts_are_kept():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "statement", "broken", "offending"), [
    ("engine/metrics.py", "from clipadapt.experiments import compare", "clipadapt layers",
     "clipadapt.engine.metrics -> clipadapt.experiments.compare"),
    ("data/base.py", "import clipadapt.world.tasks", "clipadapt layers",
     "clipadapt.data.base -> clipadapt.world.tasks"),
    ("reports/collect.py", "from clipadapt.captioning import report", "clipadapt layers",
     "clipadapt.reports.collect -> clipadapt.captioning.report"),
    ("captioning/metrics.py", "from clipadapt.classification import predictors", "the two tasks never import",
     "clipadapt.captioning.metrics -> clipadapt.classification.predictors"),
])
def test_an_import_that_runs_back_up_breaks_a_contract(package_copy, module, statement, broken, offending):
    result = lint_imports(package_copy(module, statement))
    assert result.returncode == 1, result.stdout
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout
    assert offending in result.stdout  # the offending import, with its line number after it
    assert ", 0 broken." not in result.stdout


def test_no_module_imports_itself_back_through_others():
    modules, cycles = import_cycles()
    assert modules > 100  # the whole package was read (every folder is a regular package)
    assert cycles == []


def test_the_cycle_check_finds_a_cycle(package_copy):
    package_copy("engine/cost.py", "from clipadapt.engine import metrics")
    _, cycles = import_cycles(package_copy("engine/metrics.py", "from clipadapt.engine import cost"))
    assert any({"clipadapt.engine.cost", "clipadapt.engine.metrics"} <= set(c.split()) for c in cycles)


def test_a_new_method_is_one_file(package_copy, tiny_clip_dir, colour_folder, tmp_path):
    """The walkthrough's example method (docs/architecture.md), dropped into methods/ of a copy of the package and
    nothing else changed: it is listed, trains from the command line and writes a complete run."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    root = package_copy("methods/__init__.py", "")
    (root / "clipadapt" / "methods" / "scale_head.py").write_text(example)
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "clipadapt", "train", "scale-head", "--model", str(tiny_clip_dir), "--dataset",
         f"imagefolder:{colour_folder}", "--device", "cpu", "--out", str(out), "--set", "train.epochs=2",
         "--set", "data.num_workers=0", "--set", "run.samples=0", "--set", "scale_head.lr=0.05"],
        cwd=tmp_path, env=_env(root), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["method"] == "scale-head" and record["params"]["trainable"] > 0
    assert not (PACKAGE / "methods" / "scale_head.py").exists()


def test_no_module_passes_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_import_clipadapt_loads_neither_torch_nor_the_world():
    code = "import sys, clipadapt; print(sorted(m for m in sys.modules if m.startswith(('clipadapt', 'torch'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "['clipadapt', 'clipadapt.errors', 'clipadapt.registry', 'clipadapt.version']"


def test_world_names_come_from_the_world_plugin():
    from clipadapt.captioning.data import CAPTION_DATASETS
    from clipadapt.data import DATASETS
    from clipadapt.data.prompts import TEMPLATE_SETS
    from clipadapt.models import MODELS
    from clipadapt.models.checkpoints import named_checkpoints

    assert "clipadapt.world.plugin:register" in registry._PLUGINS
    assert "world:tiny" in MODELS and "world" in DATASETS and "world:captions" in CAPTION_DATASETS
    assert {"world", "world-colour", "world-shape"} <= set(TEMPLATE_SETS.names("world*"))
    assert named_checkpoints("decoder") == ["world:tiny-lm"]
    assert named_checkpoints("classifier") == ["world:tiny-resnet"]


def test_a_plugin_registers_on_the_first_lookup_and_once(tmp_path, monkeypatch):
    (tmp_path / "my_clipadapt_plugin.py").write_text(textwrap.dedent("""
        from clipadapt.data.prompts import TEMPLATE_SETS, TemplateSet
        CALLS = []
        def register():
            CALLS.append(1)
            TEMPLATE_SETS.register("my-plugin-set", TemplateSet("my-plugin-set", ["a {} of mine."]))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_PLUGINS", list(registry._PLUGINS))
    monkeypatch.setattr(registry, "_LOADED", set(registry._LOADED))
    add_plugin("my_clipadapt_plugin:register")
    assert "my_clipadapt_plugin" not in sys.modules  # named, not imported
    from clipadapt.data.prompts import TEMPLATE_SETS

    try:
        assert TEMPLATE_SETS.get("my-plugin-set").fill("cat") == ["a cat of mine."]
        load_plugins()
        Registry("other").names()  # every lookup loads plug-ins; this one was loaded already
        assert sys.modules["my_clipadapt_plugin"].CALLS == [1]
    finally:
        TEMPLATE_SETS._entries.pop("my-plugin-set", None)
        sys.modules.pop("my_clipadapt_plugin", None)


def test_a_plugin_target_must_name_a_function():
    with pytest.raises(ValueError, match="must be 'package.module:function'"):
        add_plugin("my_clipadapt_plugin")
