"""A word-level tokenizer built locally from the world's vocabulary, saved as a transformers tokenizer."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from clipadapt.world.captions import vocabulary

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
# eos must not be id 2: transformers' CLIP text model treats eos_token_id == 2 as a legacy checkpoint
SPECIALS = (PAD, UNK, BOS, EOS)
PUNCTUATION = (".", ",", ":", "!", "?", "'", '"')
MAX_LENGTH = 32


def build_world_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate(dict.fromkeys([*SPECIALS, *PUNCTUATION, *vocabulary()]))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, model_max_length=MAX_LENGTH)
