"""The prompt methods' own invariants (the shared checks in test_methods.py cover them too)."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPModel

from clipadapt.classification.experiment import build_method, head_templates, load_experiment
from clipadapt.data import DataConfig, load_dataset
from clipadapt.engine.zeroshot import build_zero_shot_head, zero_shot_logits
from clipadapt.errors import ConfigError
from clipadapt.methods.visual_prompt import PixelPrompt, scaled_size
from clipadapt.models import load_model


@pytest.fixture
def dataset(colour_folder):
    return load_dataset(DataConfig(dataset=f"imagefolder:{colour_folder}", num_workers=0))


def make(name, tiny_clip_dir, dataset, *overrides):
    bundle = load_model(str(tiny_clip_dir))
    torch.manual_seed(0)
    return build_method(load_experiment(name, None, list(overrides)), bundle, dataset)


def pixels(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def frozen_features(tiny_clip_dir, x):
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    with torch.no_grad():
        return model.get_image_features(pixel_values=x).pooler_output


# -- visual prompts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["padding", "fixed-patch", "random-patch"])
def test_all_zero_visual_prompt_gives_the_zero_shot_logits(kind, tiny_clip_dir, dataset):
    method = make("visual-prompt", tiny_clip_dir, dataset, f"visual_prompt.kind={kind}", "visual_prompt.init=zeros")
    method.eval()
    x = pixels()
    with torch.no_grad():
        logits = method({"inputs": x})["logits"]
        expected = method.head(method.bundle.encode_image(x, normalize=False))
        head = build_zero_shot_head(method.bundle, dataset.classnames, head_templates(dataset))
        reference = zero_shot_logits(method.bundle, method.bundle.encode_image(x), head)
    assert torch.equal(logits, expected)
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-4)


def test_visual_prompt_parameter_counts_follow_the_paper():
    padding = PixelPrompt("padding", 30, (224, 224))
    assert sum(p.numel() for p in padding.parameters()) == 69_840
    assert sum(p.numel() for p in PixelPrompt("fixed-patch", 1, (224, 224)).parameters()) == 3
    assert scaled_size(30, (224, 224)) == 30 and scaled_size(30, (336, 336)) == 45 and scaled_size(30, (48, 48)) == 6
    prompt = padding.prompt(1)
    assert prompt.shape == (1, 3, 224, 224)
    assert (prompt[:, :, 30:-30, 30:-30] == 0).all() and (prompt[:, :, :30] != 0).all()


def test_random_patch_moves_while_training_and_is_fixed_at_evaluation():
    torch.manual_seed(0)
    prompt = PixelPrompt("random-patch", 4, (32, 32), eval_seed=3)
    prompt.train()
    where = (prompt.prompt(8) != 0).any(dim=1)  # (8, H, W) masks
    corners = {tuple(int(v) for v in torch.nonzero(mask)[0]) for mask in where}
    assert len(corners) > 1 and all(int(mask.sum()) == 16 for mask in where)
    prompt.eval()
    first, second = prompt.prompt(8), prompt.prompt(8)
    assert torch.equal(first, second) and first.shape[0] == 1
    other = PixelPrompt("random-patch", 4, (32, 32), eval_seed=4)
    other.load_state_dict(prompt.state_dict())
    other.eval()
    assert not torch.equal((other.prompt(1) != 0), (first != 0))  # another seed, another place


def test_visual_prompt_changes_pixels_but_not_the_model(tiny_clip_dir, dataset):
    method = make("visual-prompt", tiny_clip_dir, dataset, "visual_prompt.init=normal")
    x = pixels()
    with torch.no_grad():
        features = method.image_features(x)
    assert not torch.allclose(features, frozen_features(tiny_clip_dir, x), atol=1e-3)
    assert set(method.trainable_parameters()) == {"prompter.pad_up", "prompter.pad_down", "prompter.pad_left",
                                                  "prompter.pad_right", "head.weight"}
    alone = make("visual-prompt", tiny_clip_dir, dataset, "visual_prompt.train_head=false")
    assert set(alone.trainable_parameters()) == {"prompter.pad_up", "prompter.pad_down", "prompter.pad_left",
                                                 "prompter.pad_right"}
    from clipadapt.engine.trainable import build_optimizer

    paper = make("visual-prompt", tiny_clip_dir, dataset, "visual_prompt.optimizer=sgd", "visual_prompt.lr=40")
    optimizer = build_optimizer(paper)  # the paper's recipe, one setting away
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("prompt", 40.0), ("head", 1e-3)]


# -- VPT ------------------------------------------------------------------------------------------------------


def test_vpt_with_zero_tokens_is_the_frozen_model(tiny_clip_dir, dataset):
    method = make("vpt", tiny_clip_dir, dataset, "vpt.tokens=0")
    x = pixels()
    with torch.no_grad():
        assert torch.equal(method.bundle.encode_image(x, normalize=False), frozen_features(tiny_clip_dir, x))
    assert set(method.trainable_parameters()) == {"head.weight"}


def capture_layer_inputs(method):
    layers = method.bundle.vision_tower.encoder.layers
    seen = {}

    def keep(index, module, args, kwargs):
        seen[index] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handles = [layer.register_forward_pre_hook(lambda m, a, k, i=i: keep(i, m, a, k), with_kwargs=True)
               for i, layer in enumerate(layers)]
    return seen, handles


@pytest.mark.parametrize("position", ["prepend", "append"])
@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_vpt_tokens_sit_where_they_say(position, depth, tiny_clip_dir, dataset):
    tokens = 3
    method = make("vpt", tiny_clip_dir, dataset, f"vpt.tokens={tokens}", f"vpt.depth={depth}",
                  f"vpt.position={position}")
    method.eval()  # no prompt dropout
    plain_model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    seen, handles = capture_layer_inputs(method)
    x = pixels(2)
    with torch.no_grad():
        out = method.bundle.vision_tower(pixel_values=x)
        plain = plain_model.vision_model(pixel_values=x, output_hidden_states=True)
    patches = 16 + 1
    prompts = method.prompt_tokens.prompts.detach()
    for index, hidden in seen.items():
        assert hidden.shape[1] == patches + tokens  # deep prompts replace, they do not grow the sequence
        where = slice(1, 1 + tokens) if position == "prepend" else slice(patches, patches + tokens)
        if depth == "deep" or index == 0:
            expected = prompts[index if depth == "deep" else 0]
            assert torch.equal(hidden[:, where], expected.expand(2, -1, -1))
    # the first layer sees the class token first and the image tokens unchanged around the prompts
    first = seen[0]
    image_positions = [0] + (list(range(1 + tokens, patches + tokens)) if position == "prepend"
                             else list(range(1, patches)))
    assert torch.equal(first[:, image_positions], plain.hidden_states[0])
    # the class token (position 0) is what gets pooled
    last = out.last_hidden_state
    assert last.shape[1] == patches + tokens
    torch.testing.assert_close(out.pooler_output, method.bundle.vision_tower.post_layernorm(last[:, 0]))
    assert not torch.allclose(out.pooler_output, plain.pooler_output, atol=1e-4)  # the prompts changed it
    for handle in handles:
        handle.remove()


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_vpt_prepend_and_append_give_the_same_features(depth, tiny_clip_dir, dataset):
    """Transformer layers are permutation-equivariant and prompts carry no position embedding, so where the prompts
    sit in the sequence cannot change what the class token sees (the sweep in docs/methods.md shows it too)."""
    features = []
    for position in ("prepend", "append"):
        method = make("vpt", tiny_clip_dir, dataset, f"vpt.position={position}", f"vpt.depth={depth}")
        method.eval()
        with torch.no_grad():
            features.append(method.image_features(pixels()))
    torch.testing.assert_close(features[0], features[1], rtol=1e-5, atol=1e-5)


def test_vpt_prompt_dropout_only_while_training(tiny_clip_dir, dataset):
    method = make("vpt", tiny_clip_dir, dataset, "vpt.dropout=0.5")
    x = pixels(2)
    method.eval()
    with torch.no_grad():
        assert torch.equal(method.image_features(x), method.image_features(x))
        method.train()
        assert not torch.equal(method.image_features(x), method.image_features(x))


def test_vpt_initialisation_is_the_papers_uniform(tiny_clip_dir, dataset):
    method = make("vpt", tiny_clip_dir, dataset, "vpt.tokens=50")
    bound = (6.0 / (3 * 8 * 8 + 64)) ** 0.5  # patch 8, width 64
    prompts = method.prompt_tokens.prompts
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    assert abs(float(prompts.detach().std()) - bound / 3**0.5) < 0.1 * bound


# -- vision prefix-tuning -------------------------------------------------------------------------------------


def test_vision_prefix_of_length_zero_is_the_frozen_model(tiny_clip_dir, dataset):
    method = make("vision-prefix", tiny_clip_dir, dataset, "vision_prefix.length=0")
    x = pixels()
    with torch.no_grad():
        assert torch.equal(method.bundle.encode_image(x, normalize=False), frozen_features(tiny_clip_dir, x))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_prefixed_layer_equals_attention_by_hand(implementation, tiny_clip_dir, dataset):
    bundle = load_model(str(tiny_clip_dir))
    bundle.vision_tower.set_attn_implementation(implementation)
    torch.manual_seed(0)
    config = load_experiment("vision-prefix", None, ["vision_prefix.length=5", "vision_prefix.layer=1"])
    method = build_method(config, bundle, dataset)
    assert method.prefix.base_implementation == implementation
    attention = bundle.vision_tower.encoder.layers[1].self_attn
    hidden = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = attention(hidden)[0]
        keys, values = method.prefix.key_values(0)  # (5, 64) each
        heads, dim = attention.num_heads, attention.head_dim

        def split(t):  # (batch, length, width) -> (batch, heads, length, dim)
            return t.view(t.shape[0], t.shape[1], heads, dim).transpose(1, 2)

        q = split(attention.q_proj(hidden))
        k = split(torch.cat([keys.expand(2, -1, -1), attention.k_proj(hidden)], dim=1))
        v = split(torch.cat([values.expand(2, -1, -1), attention.v_proj(hidden)], dim=1))
        weights = torch.softmax(q @ k.transpose(-1, -2) * dim**-0.5, dim=-1)
        assert weights.shape[-1] == 17 + 5
        by_hand = attention.out_proj((weights @ v).transpose(1, 2).reshape(2, 17, 64))
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-5)
    first = bundle.vision_tower.encoder.layers[0].self_attn  # before `layer`: no prefix
    with torch.no_grad():
        plain = CLIPModel.from_pretrained(tiny_clip_dir).vision_model.encoder.layers[0].self_attn(hidden)[0]
        torch.testing.assert_close(first(hidden)[0], plain, rtol=0, atol=1e-6)


def test_collapsed_prefix_gives_the_same_logits(tiny_clip_dir, dataset):
    method = make("vision-prefix", tiny_clip_dir, dataset)
    method.eval()
    x = pixels()
    with torch.no_grad():
        before = method({"inputs": x})["logits"]
        method.collapse()
        after = method({"inputs": x})["logits"]
    assert torch.equal(before, after)
    names = set(method.trainable_parameters())
    assert names == {"prefix.key_values_free", "head.weight"}
    assert method.prefix.key_values_free.shape == (2, 2, 10, 64)  # layers, key/value, length, width
    assert method.num_parameters()["saved"] == method.num_parameters()["trainable"] == 2 * 2 * 10 * 64 + 3 * 32


def test_vision_prefix_reaches_only_the_image_tower(tiny_clip_dir, dataset):
    method = make("vision-prefix", tiny_clip_dir, dataset)
    assert method.bundle.vision_tower.config._attn_implementation == "clipadapt_extra_kv"
    assert method.bundle.text_tower.config._attn_implementation != "clipadapt_extra_kv"
    text = load_model(str(tiny_clip_dir)).encode_text(["a red thing"])
    torch.testing.assert_close(method.bundle.encode_text(["a red thing"]), text, rtol=0, atol=0)


# -- CoOp -----------------------------------------------------------------------------------------------------


def test_coop_from_a_photo_of_a_equals_zero_shot(tiny_clip_dir, dataset):
    method = make("coop", tiny_clip_dir, dataset, "coop.init=a photo of a")
    features = torch.nn.functional.normalize(torch.randn(6, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        ours = method({"inputs": features})["logits"]
        head = build_zero_shot_head(method.bundle, dataset.classnames, ["a photo of a {}."])
        reference = zero_shot_logits(method.bundle, features, head)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    tokens = method.bundle.tokenize([f"a photo of a {name}." for name in dataset.classnames])["input_ids"]
    assert torch.equal(method.head.input_ids, tokens)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_context_positions(position, tiny_clip_dir, dataset):
    method = make("coop", tiny_clip_dir, dataset, "coop.n_ctx=4", f"coop.class_token_position={position}")
    learner = method.head
    placeholder = method.bundle.tokenizer(["X"])["input_ids"][0, 1]
    for row, name in enumerate(dataset.classnames):
        ids = learner.input_ids[row]
        context = learner.cols[learner.rows == row]
        assert (ids[context] == placeholder).all()
        name_ids = method.bundle.tokenizer([name])["input_ids"][0, 1:-1]
        start = {"end": 5, "middle": 3, "front": 1}[position]
        assert torch.equal(ids[start:start + len(name_ids)], name_ids)
    with torch.no_grad():  # the learned vectors really reach the text tower
        before = learner.class_vectors()
        learner.ctx.add_(torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(1)))
        assert not torch.allclose(learner.class_vectors(), before, atol=1e-4)


def test_class_specific_context_has_one_set_per_class(tiny_clip_dir, dataset):
    method = make("coop", tiny_clip_dir, dataset, "coop.n_ctx=4", "coop.class_specific=true")
    assert method.head.ctx.shape == (3, 4, 64)
    assert method.num_parameters()["trainable"] == 3 * 4 * 64


def test_coop_leaves_other_text_encodings_alone(tiny_clip_dir, dataset):
    method = make("coop", tiny_clip_dir, dataset)
    reference = load_model(str(tiny_clip_dir)).encode_text(["a red thing"])
    torch.testing.assert_close(method.bundle.encode_text(["a red thing"]), reference, rtol=0, atol=0)


def test_coop_context_longer_than_the_text_encoder_allows(tiny_clip_dir, dataset):
    with pytest.raises(ConfigError, match=r"longer than the text encoder allows.*at most 77 tokens; use n_ctx <= 69"):
        make("coop", tiny_clip_dir, dataset, "coop.n_ctx=80")


def test_coop_words_of_an_untrained_phrase_are_the_phrase(tiny_clip_dir, dataset):
    from clipadapt.methods.coop import nearest_words

    method = make("coop", tiny_clip_dir, dataset, "coop.init=a photo")
    words = nearest_words(method, top=2)
    expected = method.bundle.token_names_fn(method.bundle.tokenizer(["a photo"])["input_ids"][0, 1:-1].tolist())
    assert [w.words[0][0] for w in words] == expected
    assert all(w.words[0][1] == pytest.approx(0.0, abs=1e-5) and w.words[1][1] > 0 for w in words)


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, setting, message", [
    ("visual-prompt", "visual_prompt.prompt_size=120", "must be between 1 and 112 (half of the 224 px image)"),
    ("visual-prompt", "visual_prompt.kind=frame", "unknown visual_prompt.kind 'frame'; valid choices: padding"),
    ("vpt", "vpt.tokens=-1", "vpt.tokens must be >= 0, got -1"),
    ("vpt", "vpt.position=middle", "unknown vpt.position 'middle'; valid choices: prepend, append"),
    ("vision-prefix", "vision_prefix.length=-2", "vision_prefix.length must be >= 0, got -2"),
    ("coop", "coop.class_token_position=left", "valid choices: end, middle, front"),
])
def test_bad_settings_name_the_limit(name, setting, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiment(name, None, [setting])


@pytest.mark.parametrize("name, setting", [("vpt", "vpt.layer=2"), ("vision-prefix", "vision_prefix.layer=5")])
def test_layer_beyond_the_depth(name, setting, tiny_clip_dir, dataset):
    with pytest.raises(ConfigError, match=r"beyond the model's depth: its vision tower has 2 layers, so .* must be "
                                          r"between 0 and 1"):
        make(name, tiny_clip_dir, dataset, setting)


# -- the rest of the ladder -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["visual-prompt", "vpt", "vision-prefix", "coop"])
def test_finished_runs_predict_and_reproduce_their_accuracy(name, tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.classification.predict import predict_images
    from clipadapt.classification.predictors import load_predictor
    from clipadapt.classification.robustness import evaluate_robustness
    from clipadapt.classification.training import run_training

    output = run_training(load_experiment(name, None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "train.epochs=2", "train.batch_size=4", f"run.out={tmp_path / 'run'}"]))
    predictor = load_predictor(output.run_dir, "cpu")
    entry = evaluate_robustness(predictor, "gaussian", [0.0, 0.3])
    assert entry["accuracy"]["0"] == output.record["metrics"]["acc1"]  # clean images: the run's own number
    image = next((colour_folder / "red").iterdir())
    results, skipped = predict_images([predictor], [image], 2, tmp_path / "predictions")
    assert not skipped and len(results) == 1 and (tmp_path / "predictions").is_dir()
    (label, top), = results[0].top.items()
    assert len(top) == 2 and top[0][1] >= top[1][1] and top[0][0] in ("red", "green", "blue")


@pytest.mark.parametrize("settings", [["coop.class_token_position=end"], ["coop.class_token_position=middle"],
                                      ["coop.init=a photo of a"]])
def test_coop_shared_prefix_gives_the_same_numbers_and_gradients(settings, tiny_clip_dir, dataset):
    results = []
    for share in ("true", "false"):
        method = make("coop", tiny_clip_dir, dataset, f"coop.share_prefix={share}", *settings)
        features = torch.nn.functional.normalize(torch.randn(6, 32, generator=torch.Generator().manual_seed(0)),
                                                 dim=-1)
        out = method({"inputs": features, "labels": torch.tensor([0, 1, 2, 0, 1, 2])})
        out["loss"].backward()
        results.append((method.head.shared, out["logits"].detach(), method.head.ctx.grad.clone()))
    (shared, logits, grad), (unshared, plain_logits, plain_grad) = results
    assert shared > 1 and unshared == 0  # the start token and the (first part of the) context are shared
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
    scale = float(plain_grad.abs().max())
    torch.testing.assert_close(grad, plain_grad, rtol=1e-3, atol=1e-4 * scale)  # float32 sums in another order


def test_class_specific_context_shares_nothing(tiny_clip_dir, dataset):
    assert make("coop", tiny_clip_dir, dataset, "coop.class_specific=true").head.shared == 0


def test_coop_on_cached_features_equals_coop_re_encoding_the_images(tiny_clip_dir, colour_folder, tmp_path):
    from clipadapt.classification.training import run_training

    outputs = []
    for mode in ("cached", "recompute"):
        outputs.append(run_training(load_experiment("coop", None, [
            f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
            "data.num_workers=0", "train.epochs=3", "train.batch_size=4", f"coop.image_features={mode}",
            "coop.lr=0.05", "features.views=clean", f"run.out={tmp_path / mode}"])))  # the same clean images
    cached, recompute = outputs
    assert cached.record["config"]["coop"]["image_features"] == "cached"
    assert recompute.record["config"]["coop"]["image_features"] == "recompute"  # (speed: benchmarks/, not here)
    torch.testing.assert_close(cached.result.logits, recompute.result.logits, rtol=1e-4, atol=1e-4)
    exact = {k: v for k, v in cached.record["metrics"].items() if k != "ece"}  # counts of correct answers
    assert exact == {k: v for k, v in recompute.record["metrics"].items() if k != "ece"}
    # ECE averages confidences, which differ within the logits' tolerance
    assert cached.record["metrics"]["ece"] == pytest.approx(recompute.record["metrics"]["ece"], abs=1e-5)


# -- pictures of the learned visual prompt ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["padding", "random-patch"])
def test_visual_prompt_run_draws_its_prompt(kind, tiny_clip_dir, colour_folder, tmp_path):
    import numpy as np
    from PIL import Image

    from clipadapt.classification.evaluation import load_run
    from clipadapt.classification.training import run_training
    from clipadapt.experiments.report import build_report

    output = run_training(load_experiment("visual-prompt", None, [
        f"model.spec={tiny_clip_dir}", "model.device=cpu", f"data.dataset=imagefolder:{colour_folder}",
        "data.num_workers=0", "train.epochs=1", "train.batch_size=4", f"visual_prompt.kind={kind}",
        "visual_prompt.init=normal", f"run.out={tmp_path / 'run'}"]))
    run_dir = output.run_dir
    assert set(output.record["pictures"]) == {"visual_prompt.png", "visual_prompt_on_sample.png"}
    alone = np.asarray(Image.open(run_dir / "visual_prompt.png"))
    on_sample = np.asarray(Image.open(run_dir / "visual_prompt_on_sample.png"))
    assert alone.shape == on_sample.shape == (32, 32, 3) and alone.dtype == np.uint8  # the model's input size
    assert alone.min() == 0 and alone.max() == 255
    _, _, method = load_run(run_dir, "cpu")
    method.eval()
    prompt = method.prompter.prompt(1)[0].detach()  # (3, H, W); random-patch: its evaluation place
    low, high = float(prompt.min().clamp(max=0)), float(prompt.max().clamp(min=0))
    expected = ((prompt - low) / (high - low) * 255).round().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(alone, expected.astype(np.uint8))  # the saved prompt, rescaled
    untouched = (prompt == 0).all(dim=0).numpy()
    zero_level = round(-low / (high - low) * 255)
    assert (alone[untouched] == zero_level).all() and (alone[~untouched] != zero_level).any()
    if kind == "padding":
        size = method.prompter.size
        inside = np.zeros((32, 32), dtype=bool)
        inside[size:-size, size:-size] = True
        np.testing.assert_array_equal(untouched, inside)  # the perturbation is zero exactly inside the frame
    else:
        assert untouched.sum() == 32 * 32 - method.prompter.size ** 2
    report = build_report([run_dir], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "visual_prompt.png" in markdown and "visual_prompt_on_sample.png" in markdown, report
