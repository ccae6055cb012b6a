"""The captioner's bridges on tiny random models: they learn, the rest stays frozen, decoding works."""

from __future__ import annotations

import pytest
import torch

from clipadapt.captioning.encoder import patch_geometry
from clipadapt.captioning.model import BRIDGES, BridgeConfig, Captioner, encode_captions, load_decoder
from clipadapt.errors import ConfigError
from tests.helpers import check_decoding_controls, train_captioner_steps

CAPTIONS = ["a red circle", "two blue squares on green", "a yellow star"]


@pytest.fixture
def encoded(tiny_encoded):
    return tiny_encoded


def build(kind, tiny_bundle, tiny_lm_dir):
    decoder = load_decoder(str(tiny_lm_dir), cross_attention=kind == "cross-attention")
    torch.manual_seed(0)
    captioner = Captioner(decoder, patch_geometry(tiny_bundle), tiny_bundle.embed_dim,
                          BridgeConfig(kind=kind, prefix_length=4))
    return captioner, decoder


@pytest.mark.parametrize("kind", BRIDGES)
def test_bridge_alone_learns_and_the_decoder_stays_frozen(kind, tiny_bundle, tiny_lm_dir, encoded):
    captioner, decoder = build(kind, tiny_bundle, tiny_lm_dir)
    trained = set(captioner.bridge_parameter_names())
    for name, parameter in captioner.named_parameters():
        parameter.requires_grad_(name in trained)
    # gradients exactly on the bridge, the decoder bit-identical, every step
    losses = train_captioner_steps(captioner, {**encoded, **encode_captions(decoder, CAPTIONS)}, 8)
    # a random frozen decoder can be steered only a little through its inputs; it must still go down
    assert losses[-1] < losses[0] - 0.03 and losses[-1] == min(losses), losses
    if kind == "cross-attention":  # the new cross-attention layers belong to the bridge
        assert any("crossattention" in n for n in trained)


@pytest.mark.parametrize("kind", BRIDGES)
def test_greedy_and_beam_decoding(kind, tiny_bundle, tiny_lm_dir, encoded):
    captioner, decoder = build(kind, tiny_bundle, tiny_lm_dir)
    captioner.eval()
    greedy = captioner.generate(encoded, max_new_tokens=6)
    beam = captioner.generate(encoded, max_new_tokens=6, num_beams=3)
    for result in (greedy, beam):
        assert len(result["captions"]) == 3 and all(isinstance(c, str) for c in result["captions"])
        assert result["sequences"].shape[0] == 3 and result["sequences"].shape[1] <= 6
    # a batch of one gives the same greedy caption as inside the batch
    single = captioner.generate({k: v[1:2] for k, v in encoded.items()}, max_new_tokens=6)
    assert single["captions"][0] == greedy["captions"][1]


def test_caption_tokens_are_bos_text_eos(tiny_lm_dir):
    decoder = load_decoder(str(tiny_lm_dir))
    batch = encode_captions(decoder, ["a red circle", "a star"])
    tokenizer = decoder.tokenizer
    first = batch["input_ids"][0].tolist()
    assert first[0] == tokenizer.bos_token_id and first[4] == tokenizer.eos_token_id
    assert tokenizer.decode(first[1:4]) == "a red circle"
    assert batch["attention_mask"].tolist() == [[1] * 5, [1] * 4 + [0]]
    assert batch["labels"][0].tolist() == [-100, *first[1:]] and batch["labels"][1, -1] == -100


def test_bad_decoders_are_refused(tiny_clip_dir, tmp_path):
    with pytest.raises(ConfigError, match="is a clip model, not a causal language model"):
        load_decoder(str(tiny_clip_dir))
    with pytest.raises(ConfigError, match="cannot load decoder"):
        load_decoder(str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="unknown bridge.kind 'adapter'; valid choices: patch-prefix"):
        BridgeConfig(kind="adapter")


@pytest.mark.parametrize("kind", ["patch-prefix", "cross-attention"])  # the mapper's prefix goes as patch-prefix's
def test_decoding_controls_reach_generate(kind, tiny_bundle, tiny_lm_dir, encoded):
    captioner, _ = build(kind, tiny_bundle, tiny_lm_dir)
    check_decoding_controls(captioner, encoded)


@pytest.mark.parametrize(("setting", "message"), [
    ({"repetition_penalty": -1.0}, "decode: repetition_penalty must be positive, got -1.0"),
    ({"length_penalty": -0.5}, "decode.length_penalty must be >= 0, got -0.5"),
    ({"no_repeat_ngram_size": -2}, "decode.no_repeat_ngram_size must be >= 0, got -2"),
    ({"min_new_tokens": 30}, r"decode.min_new_tokens \(30\) must not exceed decode.max_new_tokens \(20\)"),
])
def test_bad_decoding_controls_are_refused(setting, message):
    from clipadapt.captioning.training import DecodeConfig

    with pytest.raises(ConfigError, match=message):
        DecodeConfig(**setting)
