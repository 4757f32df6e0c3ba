"""Text → CLIP token ids with the `tokenizers` package alone (no transformers at serve time).

Texts are wrapped as `bos … eos` here rather than by the tokenizer.json post-processor, so the
result does not depend on how a checkpoint's tokenizer file happens to be configured; export
checks that this reproduces the Hugging Face tokenizer's ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer

from moderator.embed.manifest import TOKENIZER_NAME, Manifest
from moderator.errors import ModelError, TextTooLong

__all__ = ["TextTokenizer"]


class TextTokenizer:
    """Counts and encodes texts for the text graph; never truncates (raises TextTooLong)."""

    def __init__(self, tokenizer: Tokenizer, *, bos: int, eos: int, context_length: int) -> None:
        # The file may carry padding/truncation settings; both would hide overlong texts.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self.bos = bos
        self.eos = eos
        self.context_length = context_length

    @classmethod
    def from_dir(cls, directory: Path, manifest: Manifest) -> TextTokenizer:
        path = Path(directory) / TOKENIZER_NAME
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for I/O and parse errors
            raise ModelError(f"{path}: cannot load the tokenizer ({exc})") from exc
        return cls(
            tokenizer,
            bos=manifest.bos_token_id,
            eos=manifest.eos_token_id,
            context_length=manifest.context_length,
        )

    def ids(self, text: str) -> list[int]:
        """Token ids of `text` with bos/eos, whatever their number."""
        # One text at a time on purpose: encode_batch starts a rayon thread pool, which makes
        # a later fork (decode worker processes) warn and disable it; texts are few anyway.
        core = self._tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos, *core, self.eos]

    def count(self, text: str) -> int:
        """Tokens `text` needs, bos and eos included (compare with context_length)."""
        return len(self.ids(text))

    def encode(self, texts: Sequence[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(ids, mask) of shape (n, longest); raises TextTooLong for the first overlong text.

        Rows are padded on the right with the eos id, not the pad id: CLIP's text tower is
        causal, so nothing after a row's eos reaches its pooled token, and eos padding keeps
        both pooling rules (argmax of ids, first eos) on the real eos whatever the batch.
        """
        rows = [self.ids(text) for text in texts]
        for text, row in zip(texts, rows, strict=True):
            if len(row) > self.context_length:
                raise TextTooLong(text, len(row), self.context_length)
        width = max((len(row) for row in rows), default=0)
        ids = np.full((len(rows), width), self.eos, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask
