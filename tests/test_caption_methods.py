"""Decoder methods x bridges on tiny random models: what trains, what stays frozen, where training starts."""

from __future__ import annotations

import pytest
import torch

from clipadapt.captioning.encoder import patch_geometry
from clipadapt.captioning.methods import CAPTION_METHODS, apply_method, build_caption_method
from clipadapt.captioning.model import BRIDGES, BridgeConfig, Captioner, encode_captions, load_decoder
from clipadapt.errors import ConfigError
from tests.helpers import check_decoding_controls, train_captioner_steps

CAPTIONS = ["a red circle", "two blue squares on green", "a yellow star"]
METHODS = ["bridge-only", "full", "lora", "adapter", "prefix"]


@pytest.fixture
def encoded(tiny_encoded):
    return tiny_encoded


def build(method, kind, tiny_bundle, tiny_lm_dir, **settings):
    decoder = load_decoder(str(tiny_lm_dir), cross_attention=kind == "cross-attention")
    torch.manual_seed(0)
    captioner = Captioner(decoder, patch_geometry(tiny_bundle), tiny_bundle.embed_dim,
                          BridgeConfig(kind=kind, prefix_length=4))
    trained = apply_method(captioner, build_caption_method(method, settings))
    return captioner, decoder, trained


def test_every_method_is_registered():
    assert set(METHODS) <= set(CAPTION_METHODS.names())


@pytest.mark.parametrize("kind", BRIDGES)
@pytest.mark.parametrize("method", METHODS)
def test_two_steps_train_only_the_named_parameters(method, kind, tiny_bundle, tiny_lm_dir, encoded):
    captioner, decoder, trained = build(method, kind, tiny_bundle, tiny_lm_dir)
    assert {n for n, p in captioner.named_parameters() if p.requires_grad} == set(trained)
    # gradients exactly on the named parameters, everything else bit-identical, every step
    losses = train_captioner_steps(captioner, {**encoded, **encode_captions(decoder, CAPTIONS)}, 2)
    assert losses[1] < losses[0]


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_adapters_start_as_the_pretrained_decoder(method, tiny_bundle, tiny_lm_dir, encoded):
    """LoRA's B and the adapters' up-projection start at zero: the same logits as the frozen decoder."""
    plain, decoder, _ = build("bridge-only", "patch-prefix", tiny_bundle, tiny_lm_dir)
    adapted, _, trained = build(method, "patch-prefix", tiny_bundle, tiny_lm_dir)
    batch = {**encoded, **encode_captions(decoder, CAPTIONS)}
    plain.eval()
    adapted.eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(batch)["logits"], plain(batch)["logits"], rtol=0, atol=1e-6)
    assert any(name.startswith("decoder.") or name.startswith("adapters.") for name in trained)


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_peft_methods_apply_without_warnings(method, tiny_bundle, tiny_lm_dir):
    """peft reads transformers 5's deprecated is_gradient_checkpointing; that FutureWarning printed in every run."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(method, "patch-prefix", tiny_bundle, tiny_lm_dir)
    assert not [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, UserWarning))]


def test_trainable_counts_follow_their_formulas(tiny_bundle, tiny_lm_dir):
    width, layers, bottleneck, r = 32, 2, 64, 8
    geometry = patch_geometry(tiny_bundle)
    bridge = 2 * geometry.width + geometry.width * width + width  # LayerNorm + Linear
    counts = {}
    for method in METHODS:
        captioner, _, trained = build(method, "patch-prefix", tiny_bundle, tiny_lm_dir)
        parameters = dict(captioner.named_parameters())
        counts[method] = sum(parameters[n].numel() for n in trained) - bridge
    assert counts["bridge-only"] == 0
    assert counts["lora"] == layers * (r * width + 3 * width * r)  # c_attn: A (r x 32), B (96 x r)
    assert counts["adapter"] == layers * 2 * (width * bottleneck + bottleneck + bottleneck * width + width)
    length, hidden = 10, 512  # peft's prefix encoder: embedding (length x width), MLP width -> hidden -> 2 L width
    mlp = width * hidden + hidden + hidden * 2 * layers * width + 2 * layers * width
    assert counts["prefix"] == length * width + mlp
    decoder = load_decoder(str(tiny_lm_dir)).model
    assert counts["full"] == sum(p.numel() for p in decoder.parameters())


def test_bad_settings(tiny_bundle, tiny_lm_dir):
    with pytest.raises(ConfigError, match="lora target"):
        build("lora", "patch-prefix", tiny_bundle, tiny_lm_dir, targets=["q_proj"])
    with pytest.raises(ConfigError, match="bottleneck must be positive"):
        build_caption_method("adapter", {"bottleneck": 0})
    with pytest.raises(Exception, match="unknown caption method 'prefx'"):
        build_caption_method("prefx")


@pytest.mark.parametrize("kind", ["patch-prefix", "cross-attention"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_prefix_tuned_decoding_equals_peft_forward(kind, num_beams, tiny_bundle, tiny_lm_dir, encoded):
    """generate through the base decoder with peft's prefix as the cache gives peft's own next-token choices."""
    captioner, decoder, _ = build("prefix", kind, tiny_bundle, tiny_lm_dir)
    with torch.no_grad():
        for p in captioner.decoder.prompt_encoder.parameters():
            p.normal_(generator=torch.Generator().manual_seed(1))
    captioner.eval()
    out = captioner.generate(encoded, max_new_tokens=5, num_beams=num_beams)
    if num_beams == 1:  # greedy: each token is the argmax of peft's forward over what came before
        checked = 0
        for i, row in enumerate(out["sequences"]):
            ids = captioner.caption_tokens(row)
            checked += len(ids)
            for k, token in enumerate(ids):
                prefix = torch.tensor([captioner.bos_id, *ids[:k]])[None]
                batch = {key: v[i:i + 1] for key, v in encoded.items()}
                text = {"input_ids": prefix, "attention_mask": torch.ones_like(prefix), "labels": prefix}
                with torch.no_grad():
                    logits = captioner({**batch, **text})["logits"][0, -1]
                assert int(logits.argmax()) == token
        assert checked >= 3
    else:  # beams: batched decoding equals decoding each image alone (the prefix cache is per row)
        for i in range(len(out["captions"])):
            alone = captioner.generate({k: v[i:i + 1] for k, v in encoded.items()}, max_new_tokens=5, num_beams=3)
            assert alone["captions"][0] == out["captions"][i]


def test_decoding_controls_reach_the_prefix_tuned_path(tiny_bundle, tiny_lm_dir, encoded):
    """Prefix-tuned decoders decode through the base model's generate: the controls must get there too."""
    captioner, _, _ = build("prefix", "patch-prefix", tiny_bundle, tiny_lm_dir)
    with torch.no_grad():
        for p in captioner.decoder.prompt_encoder.parameters():
            p.normal_(generator=torch.Generator().manual_seed(1))
    check_decoding_controls(captioner, encoded)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_takes_the_optimizer_settings(method):
    """The classification methods' optimizer fields, checked the same way, errors naming the --set section."""
    config = build_caption_method(method, {"weight_decay": 0.05, "optimizer": "sgd", "momentum": 0.8}).config
    assert (config.weight_decay, config.optimizer, config.momentum) == (0.05, "sgd", 0.8)
    section = method.replace("-", "_")
    with pytest.raises(ConfigError, match=f"{section}: weight_decay must be >= 0, got -0.1"):
        build_caption_method(method, {"weight_decay": -0.1})
    with pytest.raises(ConfigError, match=f"unknown {section}.optimizer 'adam'; valid choices: adamw, sgd"):
        build_caption_method(method, {"optimizer": "adam"})
