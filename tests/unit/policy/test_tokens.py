"""The shipped CLIP tokenizer counts exactly as transformers' CLIP tokenizer does.

The reference is built by transformers from plain vocab.json and merges.txt files (the form
Hugging Face CLIP checkpoints carry) holding the shipped vocabulary and merges; so any
difference in normalization, splitting, byte mapping or markers shows up here. (In
transformers 5 `CLIPTokenizer` and `CLIPTokenizerFast` are one class.)
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CLIPTokenizer

from moderator.embed.paths import DEMO_DIR
from moderator.errors import ModelError
from moderator.policy.tokens import (
    CLIP_CONTEXT_LENGTH,
    CLIP_TOKENIZER,
    clip_tokens,
    configured_model,
    model_tokens,
)

FIXED = [
    "a photo of a cat",
    "A PHOTO of a Cat!!",
    "a photo of a handgun, held by a person; close-up (studio lighting)",
    "it's they're we've I'm you'll he'd",
    "3.14159 and 1,000,000 and 2024-12-07",
    "café naïve résumé Ångström",
    "日本語のテキスト 中文 한국어",
    "emoji 😀👍🏽 and flags 🇫🇷 and ZWJ 👩‍👩‍👧",
    "<|startoftext|> markers <|endoftext|> inside",
    "   leading\tand\ntrailing   whitespace  ",
    "",
    "word " * 80,
    "https://example.com/a?b=c&d=e#f",
    "ﬁ ligature, Ⅻ numeral, ½ fraction, e\u0301 combining",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model = json.loads(gzip.decompress(CLIP_TOKENIZER.read_bytes()))["model"]
    folder = tmp_path_factory.mktemp("clip-hf")
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
    merges = "".join(f"{left} {right}\n" for left, right in model["merges"])
    (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder)


def reference_ids(reference: Any, text: str) -> list[int]:
    return list(reference(text)["input_ids"])


def test_the_shipped_vocabulary_is_openai_clips() -> None:
    counter = clip_tokens()
    assert counter.context_length == CLIP_CONTEXT_LENGTH == 77
    # Ids a real CLIP checkpoint gives this caption (start, a, photo, of, a, cat, end).
    assert counter.ids("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    model = json.loads(gzip.decompress(CLIP_TOKENIZER.read_bytes()))["model"]
    assert (len(model["vocab"]), len(model["merges"])) == (49408, 48894)


def test_the_vocabulary_is_small_and_licensed() -> None:
    assert CLIP_TOKENIZER.stat().st_size < 1024 * 1024
    licence = (CLIP_TOKENIZER.parent / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence
    assert "Copyright (c) 2021 OpenAI" in licence


@pytest.mark.parametrize("text", FIXED)
def test_fixed_texts_count_as_transformers_counts(reference: Any, text: str) -> None:
    ids = clip_tokens().ids(text)
    assert ids == reference_ids(reference, text)
    assert clip_tokens().count_tokens(text) == len(ids)


def test_an_overlong_prompt_is_counted_whole_not_cut() -> None:
    assert clip_tokens().count_tokens("word " * 80) == 82
    assert clip_tokens().count_tokens("word " * 75) == 77


# Text a policy author might type: cased words, punctuation, digits, accents, CJK, emoji and
# joiners, whitespace of every kind, and the markers themselves.
EXTRAS = [
    *(" ", "\t", "\n", "\u00a0", "\u3000", "'s", "'LL", "...", "!?", "-", "—"),
    *("😀", "👩\u200d💻", "é", "e\u0301", "ß", "İ", "١٢٣"),
    *("<|endoftext|>", "<|STARTOFTEXT|>", "Photo", "GUN", "x2"),
]
AUTHORED = st.lists(
    st.one_of(st.text(st.characters(codec="utf-8"), max_size=12), st.sampled_from(EXTRAS)),
    max_size=20,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(AUTHORED)
def test_random_text_counts_as_transformers_counts(reference: Any, text: str) -> None:
    ids = clip_tokens().ids(text)
    assert ids == reference_ids(reference, text)
    assert clip_tokens().count_tokens(text) == len(ids)


def test_a_models_own_tokenizer_is_read_without_its_graphs() -> None:
    demo = model_tokens("demo")
    manifest = json.loads((DEMO_DIR / "manifest.json").read_text(encoding="utf-8"))
    assert demo.context_length == manifest["context_length"]
    assert demo.count_tokens("a red square") == 5  # one token a word, plus start and end
    assert demo.reader == "the model demo"


def test_a_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        model_tokens(str(tmp_path / "nowhere"))


def test_the_configured_model_comes_from_the_environment() -> None:
    assert configured_model({"MODERATOR_MODEL__PATH": "/models/b32"}) == "/models/b32"
    assert configured_model({"MODERATOR_MODEL__PATH": ""}) is None
    assert configured_model({}) is None
