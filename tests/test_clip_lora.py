"""clip-lora (Zanella & Ben Ayed 2024): LoRA on q, k, v of both towers, the class prompts through the adapted text
tower as the classifier, 500 x shots iterations, val-free; and its one-line refusals."""

from __future__ import annotations

import csv
import json
import re
import sys
import types
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from clipadapt.classification.evaluation import load_run
from clipadapt.classification.experiment import build_method, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.cli import app
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.inputs import TrainingData
from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
from clipadapt.errors import ConfigError
from clipadapt.methods.clip_lora import ClipLoRA
from clipadapt.models import load_model

runner = CliRunner()


def clip_lora(spec, dataset, *overrides):
    torch.manual_seed(0)
    return build_method(load_experiment("clip-lora", None, list(overrides)), load_model(str(spec)), dataset)


@pytest.fixture
def dataset(colour_folder):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


def experiment(tiny_clip_dir, colour_folder, out, *overrides):
    return load_experiment("clip-lora", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.shots=2", "data.num_workers=0", "train.batch_size=2", f"run.out={out}", "run.samples=2", *overrides])


def test_trainable_count_on_vit_b32_geometry(tmp_path):
    """2 r (d_vision 3 L_vision + d_text 3 L_text) on ViT-B/32's widths and depths (184,320 at r = 2). The MLPs are
    shrunk to width 32 (LoRA does not touch them), which keeps building and saving the model to about 3 s."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from clipadapt.models.tokenizer_utils import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = CLIPConfig(
        vision_config=dict(hidden_size=768, intermediate_size=32, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32),
        text_config=dict(hidden_size=512, intermediate_size=32, num_hidden_layers=12, num_attention_heads=8,
                         vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        projection_dim=512)
    path = tmp_path / "vit-b-32-geometry"
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    method = clip_lora(path, SimpleNamespace(classnames=["cat", "dog"]))
    r = 2
    expected = 2 * r * (768 * 3 * 12 + 512 * 3 * 12)
    assert expected == 184_320
    assert method.num_parameters()["trainable"] == expected
    names = method.trainable_parameters()
    for tower, layers in (("vision_model", 12), ("text_model", 12)):
        adapted = {".".join(re.search(r"layers\.(\d+)\.self_attn\.(\w+)\.lora_", n).groups()) for n in names
                   if tower in n}
        assert adapted == {f"{i}.{p}" for i in range(layers) for p in ("q_proj", "k_proj", "v_proj")}
    assert not any(n.startswith("head.") for n in names) and method.per_class_state() == []


def test_before_its_first_step_it_is_zero_shot_with_its_prompt(tiny_clip_dir, dataset):
    method = clip_lora(tiny_clip_dir, dataset)  # the recipe's default prompt: "a photo of a {}."
    assert method.head.prompts == [f"a photo of a {c}." for c in dataset.classnames]
    data = TrainingData(dataset, method.bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess)
    pixels = next(data.batches("pixels", "test"))["inputs"]
    bundle = load_model(str(tiny_clip_dir))  # an untouched copy
    head = build_zero_shot_head(bundle, dataset.classnames, ["a photo of a {}."])
    with torch.no_grad():
        expected = zero_shot_logits(bundle, bundle.encode_image(pixels), head)
        method.train()  # dropout on, B = 0: still the zero-shot model
        training = method({"inputs": pixels})["logits"]
        with method.evaluating():
            evaluating = method({"inputs": pixels})["logits"]
    torch.testing.assert_close(training, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(evaluating, expected, rtol=0, atol=1e-5)


def test_iterations_are_500_x_shots_unless_set():
    def trainer(shots):
        return SimpleNamespace(data=SimpleNamespace(dataset=SimpleNamespace(info={"shots": shots} if shots else {})))

    method = SimpleNamespace(config=SimpleNamespace(iterations=None))
    assert ClipLoRA.train_steps(method, trainer(2)) == 1000
    assert ClipLoRA.train_steps(method, trainer(16)) == 8000
    assert ClipLoRA.train_steps(method, trainer(None)) is None  # a whole dataset: train.epochs
    assert ClipLoRA.train_steps(SimpleNamespace(config=SimpleNamespace(iterations=7)), trainer(2)) == 7


def test_a_short_run_is_val_free_and_saves_a_peft_adapter(tiny_clip_dir, colour_folder, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import CLIPModel

    steps = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    output = run_training(experiment(tiny_clip_dir, colour_folder, tmp_path / "run", "clip_lora.iterations=4"))
    run_dir = output.run_dir
    assert len(steps) == 4  # 6 training images (3 classes x 2 shots) in batches of 2: the budget ends in epoch 2
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["selection"]["on"] == "none" and record["selection"]["chose"] == []
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["head_templates"] == "a photo of a {}." and config["train"]["keep"] == "last"
    assert config["clip_lora"]["r"] == 2 and config["clip_lora"]["towers"] == "both"
    with (run_dir / "history.csv").open() as f:
        history = list(csv.DictReader(f))
    assert len(history) == 2 and float(history[-1]["lr"]) == 1e-6  # two epochs, the cosine at its floor (eta_min)

    _, dataset, method = load_run(run_dir)
    trained_b = {n: p for n, p in method.trainable_parameters().items() if "lora_B" in n}
    assert any("text_model" in n and p.abs().sum() > 0 for n, p in trained_b.items())
    assert any("vision_model" in n and p.abs().sum() > 0 for n, p in trained_b.items())
    data = TrainingData(dataset, method.bundle, eval_batch_size=64, num_workers=0, preprocess=method.preprocess)
    pixels = next(data.batches("pixels", "test"))["inputs"]
    prompts = method.head.prompts
    plain = PeftModel.from_pretrained(CLIPModel.from_pretrained(tiny_clip_dir), run_dir / "weights/adapter").eval()
    tokens = method.bundle.tokenize(prompts)
    with torch.no_grad(), method.evaluating():
        ours_image = method.bundle.encode_image(pixels, normalize=False)
        ours_text = method.bundle.encode_text(prompts, normalize=False)
    with torch.no_grad():
        theirs_image = plain.get_image_features(pixel_values=pixels).pooler_output
        theirs_text = plain.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(ours_image, theirs_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours_text, theirs_text, rtol=0, atol=1e-5)
    from clipadapt.engine.trainer import TrainConfig, Trainer, make_accelerator

    trainer = Trainer(TrainConfig(), data, make_accelerator(torch.device("cpu"), "fp32"))
    assert torch.equal(trainer.evaluate(method, "test").logits, output.result.logits)  # loading gives the same


def test_the_cli_trains_it_and_refuses_bad_settings_in_one_line(tiny_clip_dir, colour_folder, tmp_path):
    base = ["train", "clip-lora", "--model", str(tiny_clip_dir), "--dataset", f"imagefolder:{colour_folder}",
            "--shots", "2", "--set", "data.num_workers=0"]
    for setting, message in (("clip_lora.towers=all", "unknown clip_lora.towers 'all'; valid choices: vision, "
                                                      "text, both"),
                             ("clip_lora.head=zeroshot", "clip_lora.head must be text"),
                             ("clip_lora.iterations=0", "clip_lora.iterations must be positive")):
        out = tmp_path / setting.split("=")[0]
        result = runner.invoke(app, [*base, "--out", str(out), "--set", setting])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
        assert not out.exists()


class _OpenClipBlock(nn.Module):
    """An open_clip residual block: one fused in_proj inside nn.MultiheadAttention, no q_proj/k_proj/v_proj."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 16), c_proj=nn.Linear(16, width)))


class _OpenClipModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.transformer = nn.Module()
        self.visual.transformer.resblocks = nn.ModuleList([_OpenClipBlock()])
        self.visual.image_size = 32
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([_OpenClipBlock()])
        self.text_projection = nn.Parameter(torch.zeros(8, 8))
        self.logit_scale = nn.Parameter(torch.tensor(4.6))


@pytest.fixture
def open_clip_stand_in(monkeypatch):
    """open_clip's API names (list_models, create_model, get_tokenizer) around a model with its module layout."""
    module = types.ModuleType("open_clip")
    module.list_models = lambda: ["ViT-Tiny"]
    module.create_model = lambda name, pretrained=None, **kwargs: _OpenClipModel()
    module.get_tokenizer = lambda name: lambda texts: torch.zeros(len(texts), 8, dtype=torch.long)
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return module


def test_a_model_without_q_k_v_projections_is_refused_in_one_line(open_clip_stand_in, colour_folder, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "clip-lora", "--model", "open_clip:ViT-Tiny/stand-in", "--dataset",
                                 f"imagefolder:{colour_folder}", "--shots", "2", "--out", str(out),
                                 "--set", "data.num_workers=0"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert ("LoRA target 'q_proj' matches no module of the vision tower of 'open_clip:ViT-Tiny/stand-in' (open_clip "
            "model); available module names: c_fc, c_proj, out_proj") in lines[0]
    assert not out.exists()
    with pytest.raises(ConfigError, match="text tower of 'open_clip:ViT-Tiny/stand-in'"):
        from clipadapt.models.openclip import load_open_clip

        bundle = load_open_clip("ViT-Tiny/stand-in", "open_clip:ViT-Tiny/stand-in")
        config = load_experiment("clip-lora", None, ["clip_lora.towers=text"]).clip_lora
        ClipLoRA.check(config, bundle, ["a", "b"])
