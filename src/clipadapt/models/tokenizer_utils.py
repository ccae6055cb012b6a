"""A hand-written, character-level CLIP tokenizer: a real ``CLIPTokenizer`` that needs no download."""

from __future__ import annotations

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_char_tokenizer(merges: list[str] | None = None) -> CLIPTokenizer:
    """Byte-level alphabet (256 symbols, with and without the end-of-word mark) plus the two specials.

    Token ids: 0 = start of text, 1 = end of text (also padding). Vocabulary size 514.
    """
    vocab = {BOS: 0, EOS: 1}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    for char in sorted(ByteLevel.alphabet()):
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges or [], model_max_length=77)
