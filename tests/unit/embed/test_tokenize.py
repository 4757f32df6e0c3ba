"""Tokenization for the text graph: bos/eos wrapping, eos padding, and no silent truncation."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from moderator.embed.tokenize import TextTokenizer
from moderator.errors import TextTooLong

BOS, EOS = 10, 11


def _tokenizer(context_length: int = 6) -> TextTokenizer:
    vocab = {"<unk>": 0, "a": 1, "red": 2, "cat": 3, "dog": 4}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_truncation(2)  # a tokenizer file may carry these; they must not apply
    tok.enable_padding(length=5)
    return TextTokenizer(tok, bos=BOS, eos=EOS, context_length=context_length)


def test_count_includes_bos_and_eos() -> None:
    tok = _tokenizer()
    assert tok.count("") == 2
    assert tok.count("a red cat") == 5
    assert tok.ids("a red zebra") == [BOS, 1, 2, 0, EOS]


def test_encode_pads_on_the_right_with_eos() -> None:
    ids, mask = _tokenizer().encode(["a cat", "a red dog"])
    assert ids.dtype == np.int64
    assert mask.dtype == np.int64
    assert ids.tolist() == [[BOS, 1, 3, EOS, EOS], [BOS, 1, 2, 4, EOS]]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_text_at_the_limit_is_accepted_one_over_is_refused() -> None:
    tok = _tokenizer(context_length=6)
    ids, _ = tok.encode(["a red cat dog"])  # 4 words + bos + eos == 6
    assert ids.shape == (1, 6)
    with pytest.raises(TextTooLong) as info:
        tok.encode(["a cat", "a red cat dog a"])
    assert (info.value.tokens, info.value.limit) == (7, 6)
    assert info.value.text == "a red cat dog a"


def test_empty_batch() -> None:
    ids, mask = _tokenizer().encode([])
    assert ids.shape == (0, 0)
    assert mask.shape == (0, 0)
