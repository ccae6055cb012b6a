"""CoCoOp's and MaPLe's own invariants (the shared checks in test_methods.py run them too)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from clipadapt.classification.evaluation import evaluate_run, load_run
from clipadapt.classification.experiment import build_method, load_experiment
from clipadapt.classification.training import run_training
from clipadapt.data import DataConfig, load_dataset
from clipadapt.errors import ConfigError
from clipadapt.methods import METHODS
from clipadapt.models import load_model

LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.fixture
def dataset(colour_folder):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


def make(name, tiny_clip_dir, dataset, *overrides):
    torch.manual_seed(0)
    return build_method(load_experiment(name, None, list(overrides)), load_model(str(tiny_clip_dir)), dataset)


def image_features(n=6, seed=0):
    return nn.functional.normalize(torch.randn(n, 32, generator=torch.Generator().manual_seed(seed)), dim=-1)


# -- CoCoOp ---------------------------------------------------------------------------------------------------


def test_cocoop_with_a_zero_meta_net_output_is_coop_with_the_same_context(tiny_clip_dir, dataset):
    cocoop = make("cocoop", tiny_clip_dir, dataset)
    coop = make("coop", tiny_clip_dir, dataset, "coop.init=a photo of a")
    assert torch.equal(cocoop.head.ctx, coop.head.ctx)  # both start from "a photo of a"
    features = image_features()
    with torch.no_grad():
        shifted = cocoop({"inputs": features})["logits"]
        cocoop.head.meta_net.linear2.weight.zero_()
        cocoop.head.meta_net.linear2.bias.zero_()
        unshifted = cocoop({"inputs": features})["logits"]
        reference = coop({"inputs": features})["logits"]
    torch.testing.assert_close(unshifted, reference, rtol=0, atol=1e-5)
    assert not torch.allclose(shifted, reference, atol=1e-3)  # the untrained meta-net does shift the context


@pytest.mark.parametrize("share, per_pass", [("true", 1024), ("true", 3), ("false", 1024), ("true", 6)])
def test_cocoop_batching_gives_each_image_its_own_prompts(share, per_pass, tiny_clip_dir, dataset):
    """Several images' prompts in one pass (with or without a shared prefix per image) give the numbers and
    gradients of the plainest way, one image at a time with every prompt whole (as the reference loops)."""
    results = []
    for settings in ([f"cocoop.share_prefix={share}", f"cocoop.prompts_per_pass={per_pass}"],
                     ["cocoop.share_prefix=false", "cocoop.prompts_per_pass=3"]):
        method = make("cocoop", tiny_clip_dir, dataset, *settings)
        out = method({"inputs": image_features(), "labels": LABELS})
        out["loss"].backward()
        grads = {name: p.grad.clone() for name, p in method.trainable_parameters().items()}
        results.append((method.head, out["logits"].detach(), grads))
    (head, logits, grads), (plain, plain_logits, plain_grads) = results
    assert plain.images_per_pass == 1 and plain.shared == 0
    assert head.images_per_pass == per_pass // 3 and (head.shared > 1) == (share == "true")
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        scale = float(plain_grads[name].abs().max())
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("share", ["true", "false"])
def test_cocoop_runs_batch_x_classes_prompts_through_the_text_tower(share, tiny_clip_dir, dataset):
    method = make("cocoop", tiny_clip_dir, dataset, f"cocoop.share_prefix={share}")
    rows = []
    embeddings = method.bundle.text_tower.embeddings
    handle = embeddings.register_forward_hook(lambda module, args, kwargs, out: rows.append(out.shape[:2]),
                                              with_kwargs=True)
    try:
        method({"inputs": image_features(5)})
    finally:
        handle.remove()
    classes, length = 3, method.head.input_ids.shape[1]
    if share == "true":  # each image's prefix once, then every class's remaining tokens
        p = method.head.shared
        assert rows == [(5, p), (5 * classes, length - p)]
    else:
        assert rows == [(5 * classes, length)]


# -- MaPLe ----------------------------------------------------------------------------------------------------


def capture(layers, outputs: bool = False):
    """Each layer's input (or output) hidden states, after the method's own hooks (registered before these)."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        if outputs:
            handles.append(layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)))
        else:
            handles.append(layer.register_forward_pre_hook(
                lambda m, args, kwargs, i=i: seen.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True))
    return seen, handles


@pytest.mark.parametrize("depth", [1, 2])
def test_maple_vision_prompts_are_the_coupled_text_prompts_in_layers_below_depth(depth, tiny_clip_dir, dataset):
    method = make("maple", tiny_clip_dir, dataset, f"maple.depth={depth}")
    n, vision = 2, method.bundle.vision_tower
    text_prompts = method.head.layer_prompts()
    assert len(text_prompts) == depth and len(method.vision_prompts.coupling) == depth
    inputs, handles = capture(vision.encoder.layers)
    outputs, more = capture(vision.encoder.layers, outputs=True)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            method.eval()
            method({"inputs": pixels})
    finally:
        for handle in handles + more:
            handle.remove()
    patches = (32 // 8) ** 2 + 1
    with torch.no_grad():
        coupled = [method.vision_prompts.coupling[i](text_prompts[i]) for i in range(depth)]
        first = vision.pre_layrnorm(coupled[0])  # appended after the embeddings, before the pre-layer-norm
    for i in range(2):
        assert inputs[i].shape == (3, patches + n, 64)
        prompts = inputs[i][:, -n:]
        if i == 0:
            torch.testing.assert_close(prompts, first.expand(3, -1, -1), rtol=0, atol=1e-6)
        elif i < depth:  # a fresh coupled set replaces what layer i - 1 made of the prompts
            torch.testing.assert_close(prompts, coupled[i].expand(3, -1, -1), rtol=0, atol=1e-6)
        else:  # beyond depth the prompts' outputs are carried along, untouched
            assert torch.equal(prompts, outputs[i - 1][:, -n:])


@pytest.mark.parametrize("depth", [1, 2])
def test_maple_language_prompts_reach_the_text_layers_below_depth(depth, tiny_clip_dir, dataset):
    method = make("maple", tiny_clip_dir, dataset, f"maple.depth={depth}", "maple.share_prefix=false")
    text = method.bundle.text_tower
    inputs, handles = capture(text.encoder.layers)
    outputs, more = capture(text.encoder.layers, outputs=True)
    try:
        with torch.no_grad():
            method.head.class_vectors()
    finally:
        for handle in handles + more:
            handle.remove()
    ctx, deep = method.head.ctx, list(method.head.deep)
    with torch.no_grad():
        positions = text.embeddings.position_embedding.weight[1:3]
    torch.testing.assert_close(inputs[0][:, 1:3], (ctx + positions).expand(3, -1, -1), rtol=0, atol=1e-6)
    if depth == 2:
        assert torch.equal(inputs[1][:, 1:3], deep[0].expand(3, -1, -1))
    else:
        assert not deep and torch.equal(inputs[1][:, 1:3], outputs[0][:, 1:3])
    assert torch.equal(inputs[1][:, 3:], outputs[0][:, 3:])  # the other tokens are the previous layer's


def test_maple_learns_the_first_words_of_its_prompt_and_keeps_the_rest(tiny_clip_dir, dataset):
    method = make("maple", tiny_clip_dir, dataset, "maple.depth=2")
    tokens = method.bundle.tokenize([f"a photo of a {name}." for name in dataset.classnames])["input_ids"]
    assert torch.equal(method.head.input_ids, tokens)
    assert method.head.cols.tolist() == [1, 2] * 3
    table = method.bundle.text_tower.embeddings.token_embedding.weight
    assert torch.equal(method.head.ctx, table[tokens[0, 1:3]])
    random = make("maple", tiny_clip_dir, dataset, "maple.depth=2", "maple.init=")
    placeholder = method.bundle.tokenizer(["X"])["input_ids"][0, 1]
    assert (random.head.input_ids[:, 1:3] == placeholder).all()
    assert float(random.head.ctx.detach().std()) == pytest.approx(0.02, rel=0.5)


def test_maple_leaves_other_text_encodings_alone(tiny_clip_dir, dataset):
    method = make("maple", tiny_clip_dir, dataset, "maple.depth=2")
    reference = load_model(str(tiny_clip_dir)).encode_text(["a red thing"])
    torch.testing.assert_close(method.bundle.encode_text(["a red thing"]), reference, rtol=0, atol=0)


# -- both -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, settings", [("cocoop", ["train.batch_size=4"]), ("maple", [])])
def test_base_to_novel_after_training_on_base(name, settings, tiny_clip_dir, four_colour_folder, tmp_path):
    output = run_training(load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{four_colour_folder}",
        "data.num_workers=0", "data.subsample=base", "train.epochs=2", f"run.out={tmp_path / 'run'}", *settings]))
    record = output.record
    assert record["config"]["train"]["keep"] == "last" and record["selection"]["chose"] == []  # the recipe's
    # MaPLe's default depth (9 of 12 layers) adapted to the tiny model's 2, and recorded
    assert record["effective"] == ({"maple.depth": 2} if name == "maple" else {})
    assert json.loads((output.run_dir / "metrics.json").read_text())["effective"] == record["effective"]
    result = evaluate_run(output.run_dir, "test", data=["data.subsample=new"])
    _, dataset, method = load_run(output.run_dir, data=["data.subsample=new"])
    test = dataset.split("test")  # the new classes' accuracy, recomputed image by image with the loaded method
    with torch.no_grad():
        predicted = [int(method.pixel_logits(method.preprocess(test.load(i))[None]).argmax()) for i in range(len(test))]
    expected = float(np.mean(np.array(predicted) == test.labels))
    assert result["classes"] == 2 and result["metrics"]["acc1"] == pytest.approx(expected, abs=1e-6)
    halves = [load_dataset(DataConfig(dataset=f"imagefolder:{four_colour_folder}", subsample=half)).classnames
              for half in ("base", "new")]
    assert method.trained_classes == halves[0] and method.classnames == dataset.classnames == halves[1]
    assert len(halves[1]) == 2 and not set(halves[0]) & set(halves[1])
    saved = load_file(str(output.run_dir / "weights" / "trainable.safetensors"))
    assert saved.keys() == method.trainable_state().keys()
    assert all(torch.equal(saved[key], value) for key, value in method.trainable_state().items())
    evaluation = json.loads((output.run_dir / "eval_test.json").read_text())
    assert evaluation["data"] == ["data.subsample=new"]


@pytest.mark.parametrize("name", ["cocoop", "maple"])
def test_towers_it_cannot_prompt_are_refused_in_one_line(name, tiny_clip_dir, tiny_siglip_dir, dataset):
    siglip = load_model(str(tiny_siglip_dir))
    with pytest.raises(ConfigError, match=rf"^{name} needs a transformers CLIP text tower; '.*' is a siglip model$"):
        build_method(load_experiment(name, None, []), siglip, dataset)
    bundle = load_model(str(tiny_clip_dir))
    open_clip = dataclasses.replace(bundle, backend="open_clip", spec="open_clip:ViT-B-32/openai",
                                    info={"model_type": "open_clip", "embed_dim": 32},
                                    vision_tower_fn=lambda m: nn.Identity(), text_tower_fn=lambda m: nn.Identity())
    entry = METHODS.get(name)
    with pytest.raises(ConfigError, match=rf"^{name} needs a transformers CLIP text tower; "
                                          r"'open_clip:ViT-B-32/openai' is a open_clip model$"):
        entry.method_class.check(entry.config_class(), open_clip, dataset.classnames)


@pytest.mark.parametrize("setting, message", [
    ("maple.depth=0", "maple.depth must be >= 1 (1: prompts in the first layer only), got 0"),
    ("maple.length=0", "maple.length must be >= 1, got 0"),
    ("cocoop.prompts_per_pass=0", "cocoop.prompts_per_pass must be positive, got 0"),
    ("cocoop.n_ctx=0", "cocoop.n_ctx must be positive, got 0"),
])
def test_bad_settings_name_the_limit(setting, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiment(setting.split(".")[0], None, [setting])


def test_maple_deeper_than_the_model_is_refused(tiny_clip_dir, dataset):
    with pytest.raises(ConfigError, match=r"^maple.depth=9 is beyond the model's depth: its towers have 2 layers "
                                          r"\(the shallower one\), so maple.depth must be between 1 and 2$"):
        make("maple", tiny_clip_dir, dataset, "maple.depth=9")


@pytest.mark.parametrize("layers, depth", [(12, 9), (2, 2), (1, 1), (6, 5), (24, 18)])
def test_maple_default_depth_is_the_references_share_of_the_layers(layers, depth, tiny_clip_dir, dataset,
                                                                   monkeypatch):
    from clipadapt.methods import maple

    method = make("maple", tiny_clip_dir, dataset)  # the tiny model: 2 of 2 layers
    assert method.depth == 2 and len(method.head.deep) == 1 and len(method.vision_prompts.coupling) == 2
    monkeypatch.setattr(maple, "model_depth", lambda b: layers)
    config = load_experiment("maple", None, []).maple
    assert config.depth is None and maple.prompt_depth(config, method.bundle) == depth
    assert maple.prompt_depth(dataclasses.replace(config, depth=1), method.bundle) == 1  # an explicit one is kept


@pytest.fixture(scope="module")
def tiny_siglip_dir(tmp_path_factory):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    from clipadapt.models.tokenizer_utils import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    layer = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = SiglipConfig(text_config=dict(layer, vocab_size=len(tokenizer), max_position_embeddings=64,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
                          vision_config=dict(layer, image_size=32, patch_size=8))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("siglip") / "tiny-siglip"
    SiglipModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path
