"""Randomly initialised CLIP checkpoints in `save_pretrained` layout, for offline smoke tests.

With the Hugging Face hub out of reach, this is how the export path and the runtime are
exercised on the real architectures: same widths, heads, patch and image sizes, token ids and
preprocessing as the OpenAI checkpoints, random weights, and a small word-level tokenizer
that uses CLIP's special-token ids: whole words, or CLIP's own byte-level BPE tokenizer class
over a few hundred tokens. `layers` trims depth, which changes no op pattern.

    python -m moderator.export.random_clip --arch ViT-B/32 --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final, Literal

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

__all__ = [
    "ARCHITECTURES",
    "bpe_tokenizer",
    "clip_config",
    "save_random_clip",
    "word_tokenizer",
]

# OpenAI CLIP geometry (vision width/layers/heads/patch/image, text width/layers/heads, dim).
ARCHITECTURES: Final[dict[str, dict[str, int]]] = {
    "ViT-B/32": dict(vw=768, vl=12, vh=12, patch=32, image=224, tw=512, tl=12, th=8, dim=512),
    "ViT-B/16": dict(vw=768, vl=12, vh=12, patch=16, image=224, tw=512, tl=12, th=8, dim=512),
    "ViT-L/14": dict(vw=1024, vl=24, vh=16, patch=14, image=224, tw=768, tl=12, th=12, dim=768),
    # Seconds to export: for unit tests of every code path.
    "tiny": dict(vw=64, vl=2, vh=4, patch=8, image=32, tw=64, tl=2, th=4, dim=32),
}
OPENAI_VOCAB: Final = 49408  # ids 49406/49407 are <|startoftext|>/<|endoftext|>
TINY_VOCAB: Final = 1024  # room for the BPE tokenizer's 512 byte symbols and merges
CONTEXT: Final = {"tiny": 16}  # everything else: CLIP's 77
MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
STD: Final = (0.26862954, 0.26130258, 0.27577711)
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
WORDS: Final = (
    *("a", "an", "the", "of", "on", "in", "with", "and", "two", "small", "large"),
    *("photo", "picture", "drawing", "illustration", "cat", "dog", "car", "tree", "house"),
    *("man", "woman", "red", "green", "blue", "white", "black", "circle", "square"),
)


def word_tokenizer(
    vocab_size: int, context_length: int, *, pad_is_eos: bool = False
) -> PreTrainedTokenizerFast:
    """Lower-cased whitespace words; bos/eos take the two highest ids, as in OpenAI's CLIP."""
    vocab = {PAD: 0, UNK: 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    vocab |= {BOS: vocab_size - 2, EOS: vocab_size - 1}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS if pad_is_eos else PAD,
        unk_token=UNK,
        model_max_length=context_length,
    )


def bpe_tokenizer(vocab_size: int, context_length: int) -> PreTrainedTokenizerFast:
    """transformers' CLIPTokenizer (CLIP's normalizer, split regex, byte-level BPE, `</w>`
    suffixes, Roberta-style bos/eos) over the byte alphabet plus merges spelling `WORDS`."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab |= {f"{ch}</w>": len(alphabet) + i for i, ch in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    for word in WORDS:  # merge each word left to right into one `word</w>` token
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1], *pieces[2:]]
    vocab |= {BOS: vocab_size - 2, EOS: vocab_size - 1}
    # transformers annotates merges as strings, but `tokenizers` BPE takes (left, right) pairs.
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=context_length,
    )


def clip_config(
    arch: str = "tiny", *, layers: int | None = None, legacy_eos: bool = False
) -> CLIPConfig:
    """`arch`'s geometry; `legacy_eos` sets eos_token_id=2 as OpenAI's own configs do, which
    makes HF pool text at argmax(ids) instead of at the first eos."""
    a = ARCHITECTURES[arch]
    vocab = TINY_VOCAB if arch == "tiny" else OPENAI_VOCAB
    text: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=a["tw"],
        intermediate_size=4 * a["tw"],
        num_hidden_layers=layers or a["tl"],
        num_attention_heads=a["th"],
        max_position_embeddings=CONTEXT.get(arch, 77),
        bos_token_id=vocab - 2,
        eos_token_id=2 if legacy_eos else vocab - 1,
        pad_token_id=0,
        projection_dim=a["dim"],
    )
    vision: dict[str, Any] = dict(
        hidden_size=a["vw"],
        intermediate_size=4 * a["vw"],
        num_hidden_layers=layers or a["vl"],
        num_attention_heads=a["vh"],
        patch_size=a["patch"],
        image_size=a["image"],
        projection_dim=a["dim"],
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=a["dim"])


def save_random_clip(
    out: Path,
    config: CLIPConfig,
    *,
    seed: int = 0,
    pad_is_eos: bool = False,
    tokenizer: Literal["words", "clip-bpe"] = "words",
) -> Path:
    """Write a random CLIPModel, tokenizer and image processor config into `out`.

    The "clip-bpe" tokenizer pads with eos, as OpenAI's does, whatever `pad_is_eos` says.
    """
    torch.manual_seed(seed)
    model = CLIPModel(config)
    text: Any = config.text_config
    if tokenizer == "clip-bpe":
        tok = bpe_tokenizer(text.vocab_size, text.max_position_embeddings)
    else:
        tok = word_tokenizer(text.vocab_size, text.max_position_embeddings, pad_is_eos=pad_is_eos)
    vision: Any = config.vision_config
    size = int(vision.image_size)
    processor = CLIPImageProcessorPil(  # the Pil class: no torchvision needed or warned about
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(MEAN),
        image_std=list(STD),
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _main() -> None:  # pragma: no cover - thin CLI
    parser = argparse.ArgumentParser(description="Write a random CLIP checkpoint.")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="ViT-B/32")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--legacy-eos", action="store_true")
    parser.add_argument("--tokenizer", choices=["words", "clip-bpe"], default="words")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = clip_config(args.arch, layers=args.layers, legacy_eos=args.legacy_eos)
    print(save_random_clip(args.out, config, tokenizer=args.tokenizer))


if __name__ == "__main__":  # pragma: no cover
    _main()
