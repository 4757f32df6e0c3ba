"""Counting a prompt's tokens when no Encoder is at hand, so overlong prompts fail validation.

Every CLIP text tower reads at most 77 tokens (start and end markers included) and moderator
refuses longer prompts rather than cutting them. Without a model, prompts are counted with
OpenAI CLIP's own byte-pair-encoding tokenizer, shipped in `clip/` (built reproducibly by
scripts/build_clip_tokenizer.py); with one, with that model's tokenizer file alone, which is
much cheaper than loading its ONNX graphs.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from moderator.errors import ModelError

if TYPE_CHECKING:  # importing moderator.embed loads onnxruntime: only when a count is needed
    from moderator.embed.tokenize import TextTokenizer

__all__ = [
    "CLIP_CONTEXT_LENGTH",
    "CLIP_TOKENIZER",
    "MODEL_PATH_VAR",
    "TokenCounter",
    "clip_tokens",
    "configured_model",
    "model_tokens",
]

CLIP_TOKENIZER: Final = Path(__file__).resolve().parent / "clip" / "tokenizer.json.gz"
CLIP_CONTEXT_LENGTH: Final = 77
MODEL_PATH_VAR: Final = "MODERATOR_MODEL__PATH"
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


class TokenCounter(Protocol):
    """The part of an Encoder the length check needs (any `types.Encoder` satisfies it)."""

    @property
    def context_length(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...


class TokenizerCounter:
    """A TokenCounter over a bare tokenizer; `reader` names it in messages ("CLIP")."""

    def __init__(self, tokenizer: TextTokenizer, reader: str) -> None:
        self._tokenizer = tokenizer
        self.reader = reader

    @property
    def context_length(self) -> int:
        return self._tokenizer.context_length

    def count_tokens(self, text: str) -> int:
        return self._tokenizer.count(text)

    def ids(self, text: str) -> list[int]:
        """The token ids counted, start and end markers included."""
        return self._tokenizer.ids(text)


@functools.cache
def clip_tokens() -> TokenizerCounter:
    """OpenAI CLIP's tokenizer (shared by every OpenAI and open_clip checkpoint), 77 tokens."""
    from tokenizers import Tokenizer

    from moderator.embed.tokenize import TextTokenizer

    try:
        tokenizer = Tokenizer.from_str(gzip.decompress(CLIP_TOKENIZER.read_bytes()).decode())
    except Exception as exc:  # tokenizers raises a bare Exception for parse errors
        raise ModelError(
            f"{CLIP_TOKENIZER}: cannot load the shipped CLIP tokenizer ({exc}); reinstall "
            "moderator, or pass a model"
        ) from exc
    bos, eos = tokenizer.token_to_id(_BOS), tokenizer.token_to_id(_EOS)
    if bos is None or eos is None:
        raise ModelError(f"{CLIP_TOKENIZER}: the CLIP start/end markers are missing")
    text = TextTokenizer(tokenizer, bos=bos, eos=eos, context_length=CLIP_CONTEXT_LENGTH)
    return TokenizerCounter(text, "CLIP")


def model_tokens(spec: str) -> TokenizerCounter:
    """The tokenizer of an exported model directory (or `demo`), without its graphs."""
    from moderator.embed.manifest import read_manifest
    from moderator.embed.paths import resolve_model_path
    from moderator.embed.tokenize import TextTokenizer

    directory = resolve_model_path(spec)
    tokenizer = TextTokenizer.from_dir(directory, read_manifest(directory))
    return TokenizerCounter(tokenizer, f"the model {spec}")


def configured_model(environ: Mapping[str, str]) -> str | None:
    """The model the service is configured with through the environment, if any."""
    return environ.get(MODEL_PATH_VAR) or None
