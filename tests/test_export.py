"""``clipadapt export``: exported runs give the run's predictions through plain transformers, refusals write nothing."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import clipadapt
from clipadapt.cli import app

runner = CliRunner()


def train(method, tiny_clip_dir, colour_folder, out, *settings, epochs=2):
    return clipadapt.train(method, str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=out, epochs=epochs,
                           device="cpu", progress=False,
                           overrides=["data.num_workers=0", "train.batch_size=4", *settings])


def images(colour_folder, per_class=3):
    return [path for folder in sorted(colour_folder.iterdir()) for path in sorted(folder.iterdir())[:per_class]]


def clipadapt_top1(run, paths):
    """The class and probabilities clipadapt.predict gives each image."""
    predictions, skipped = clipadapt.predict(run.dir, paths, top_k=3, device="cpu")
    assert not skipped
    tops = [next(iter(p.top.values())) for p in predictions]
    return [top[0][0] for top in tops], [dict(top) for top in tops]


def pipeline_top1(out, paths):
    from transformers import pipeline

    record = json.loads((out / "clipadapt_export.json").read_text())
    classifier = pipeline("zero-shot-image-classification", model=str(out), device="cpu")
    results = [classifier(str(path), candidate_labels=record["classnames"],
                          hypothesis_template=record["hypothesis_template"]) for path in paths]
    return [r[0]["label"] for r in results], [{x["label"]: x["score"] for x in r} for r in results]


def readme_snippet_top1(out, paths):
    """Runs the exported README's head snippet (transformers + safetensors only) on each image."""
    code = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S)[-1]
    assert "clipadapt" not in code
    tops, probabilities = [], []
    for path in paths:
        namespace: dict = {}
        exec(code.replace('"photo.jpg"', repr(str(path))), namespace)  # noqa: S102 - the documented snippet itself
        probs = namespace["logits"].softmax(-1)[0]
        tops.append(namespace["classnames"][int(probs.argmax())])
        probabilities.append(dict(zip(namespace["classnames"], probs.tolist(), strict=True)))
    return tops, probabilities


def assert_same_predictions(expected, got):
    (top, probs), (other_top, other_probs) = expected, got
    assert other_top == top
    for p, q in zip(probs, other_probs, strict=True):  # clipadapt's preprocessing equals transformers' within 1e-5
        for name in p:
            assert q[name] == pytest.approx(p[name], abs=1e-3)


def test_zero_shot_run_exports_a_pipeline_model(tiny_clip_dir, colour_folder, tmp_path):
    run = clipadapt.zeroshot(str(tiny_clip_dir), f"imagefolder:{colour_folder}", out=tmp_path / "zs", device="cpu",
                             progress=False, overrides=["data.num_workers=0"])
    record = clipadapt.export(run, tmp_path / "export")
    assert record["kind"] == "text" and record["pipeline_exact"]
    assert record["classnames"] == ["blue", "green", "red"] and record["hypothesis_template"] == "a photo of a {}."
    assert "head.safetensors" not in record["files"] and "README.md" in record["files"]
    paths = images(colour_folder)
    assert_same_predictions(clipadapt_top1(run, paths), pipeline_top1(tmp_path / "export", paths))


def test_lora_with_a_text_classifier_exports_merged_for_the_pipeline(tiny_clip_dir, colour_folder, tmp_path):
    from safetensors.torch import load_file
    from transformers import CLIPModel

    run = train("lora", tiny_clip_dir, colour_folder, tmp_path / "lora", "lora.head=text", "lora.text=true",
                "lora.lr=0.05")
    out = tmp_path / "export"
    record = clipadapt.export(run, out)
    assert record["kind"] == "text" and record["method"] == "lora"
    exported = load_file(str(out / "model.safetensors"))
    plain = CLIPModel.from_pretrained(tiny_clip_dir).state_dict()
    assert set(exported) <= set(plain) and not [k for k in exported if "lora" in k or "base_layer" in k]
    assert set(plain) - set(exported) <= {"text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"}
    changed = [k for k in exported if not torch.equal(exported[k], plain[k])]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)  # the merged update
    assert any(k.startswith("text_model.") for k in changed) and any(k.startswith("vision_model.") for k in changed)
    paths = images(colour_folder)
    assert_same_predictions(clipadapt_top1(run, paths), pipeline_top1(out, paths))


@pytest.mark.parametrize("method, settings", [("linear-probe", []), ("lora", ["lora.lr=0.05"])])
def test_learned_head_readme_snippet_reproduces_the_run(method, settings, tiny_clip_dir, colour_folder, tmp_path):
    run = train(method, tiny_clip_dir, colour_folder, tmp_path / "run", *settings)
    out = tmp_path / "export"
    record = clipadapt.export(run, out)
    assert record["kind"] == "head" and record["hypothesis_template"] is None
    with safe_open(str(out / "head.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["classnames"]) == ["blue", "green", "red"]
        assert f.get_tensor("weight").shape == (3, 32) and f.get_tensor("bias").shape == (3,)
    paths = images(colour_folder)
    assert_same_predictions(clipadapt_top1(run, paths), readme_snippet_top1(out, paths))


@pytest.mark.parametrize("method, reason", [
    ("coop", "coop runs cannot be exported to plain transformers: its learned context vectors are not words"),
    ("vpt", "vpt runs cannot be exported to plain transformers: its learned tokens are inserted"),
])
def test_methods_that_are_not_weights_are_refused_in_one_line(method, reason, tiny_clip_dir, colour_folder,
                                                              tmp_path):
    run = train(method, tiny_clip_dir, colour_folder, tmp_path / "run", epochs=1)
    result = runner.invoke(app, ["export", str(run.dir), str(tmp_path / "export")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and reason in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written, no staging left behind


def test_an_existing_out_is_refused_without_overwrite(tiny_clip_dir, colour_folder, tmp_path):
    run = train("linear-probe", tiny_clip_dir, colour_folder, tmp_path / "run")
    out = tmp_path / "export"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = runner.invoke(app, ["export", str(run.dir), str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"'{out}' already exists; pass --overwrite to replace it" in result.output
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    result = runner.invoke(app, ["export", str(run.dir), str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "mine.txt" not in {p.name for p in out.iterdir()} and (out / "head.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]


def test_clip_lora_exports_a_pipeline_model(tiny_clip_dir, colour_folder, tmp_path):
    """LoRA on both towers and the class prompts through the adapted text tower: a plain CLIPModel the zero-shot
    pipeline uses with the run's template gives clip-lora's predictions."""
    run = train("clip-lora", tiny_clip_dir, colour_folder, tmp_path / "run", "clip_lora.iterations=4",
                "clip_lora.lr=0.01", "train.augment=none")
    record = clipadapt.export(run, tmp_path / "export")
    assert record["kind"] == "text" and record["hypothesis_template"] == "a photo of a {}."
    from transformers import CLIPModel

    before = CLIPModel.from_pretrained(str(tiny_clip_dir)).state_dict()
    after = CLIPModel.from_pretrained(str(tmp_path / "export")).state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"vision_model", "text_model"}  # the merged update is in both towers
    paths = images(colour_folder)
    assert_same_predictions(clipadapt_top1(run, paths), pipeline_top1(tmp_path / "export", paths))
