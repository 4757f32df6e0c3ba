"""Build moderator/policy/clip/tokenizer.json.gz: OpenAI CLIP's BPE tokenizer for `tokenizers`.

`moderator policy validate` counts prompt tokens with it when no model is named, so the
77-token limit of every CLIP text tower is checked exactly, not estimated. The vocabulary is
OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT, see moderator/policy/clip/LICENSE), taken from
the open_clip_torch wheel on PyPI, pinned by version and sha256 so every build is the same
file. The output is byte-for-byte reproducible (gzip without a timestamp or name).

usage: build_clip_tokenizer.py [--vocab bpe_simple_vocab_16e6.txt.gz] [--check]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "moderator" / "policy" / "clip" / "tokenizer.json.gz"
WHEEL = "open_clip_torch==3.3.0"
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
# OpenAI's tokenizer uses the first 49152 - 256 - 2 merges of the file: with the 256 bytes,
# their 256 end-of-word forms and the two markers that makes a 49408-token vocabulary.
MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Words, single digits and runs of other marks; English contractions split off; the markers
# kept whole. Everything the pattern does not match (whitespace) is dropped.
SPLIT = "|".join(
    [
        *(r"<\|startoftext\|>", r"<\|endoftext\|>"),
        *("'s", "'t", "'re", "'ve", "'m", "'ll", "'d"),
        *(r"[\p{L}]+", r"[\p{N}]", r"[^\s\p{L}\p{N}]+"),
    ]
)
# Token ids a CLIP checkpoint gives "a photo of a cat", as a check of the vocabulary order.
PROBE = ("a photo of a cat", [320, 1125, 539, 320, 2368])


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes, in vocabulary order.

    Bytes that are printable Latin-1 stand for themselves; the others (controls, space, soft
    hyphen) are shifted past 255 in byte order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def fetch_vocab() -> bytes:
    """The vocabulary file out of the pinned open_clip_torch wheel (pip download, no deps)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL]
        subprocess.run(cmd, check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(MEMBER)


def build(vocab_gz: bytes) -> Tokenizer:
    digest = hashlib.sha256(vocab_gz).hexdigest()
    if digest != VOCAB_SHA256:
        raise SystemExit(f"vocabulary sha256 {digest} is not the pinned {VOCAB_SHA256}")
    lines = gzip.decompress(vocab_gz).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]  # line 0 is a header
    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("the vocabulary has repeated tokens")
    model = BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        fuse_unk=False,
        unk_token=EOS,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(BOS, special=True), AddedToken(EOS, special=True)])
    text, expected = PROBE
    got = tokenizer.encode(text, add_special_tokens=False).ids
    markers = (tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS))
    if got != expected or markers != (49406, 49407):
        raise SystemExit(f"{text!r} gives {got}, expected {expected}: the vocabulary is off")
    return tokenizer


def compress(tokenizer: Tokenizer) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(tokenizer.to_str().encode("utf-8"))
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=Path, help="bpe_simple_vocab_16e6.txt.gz (else pip)")
    parser.add_argument("--check", action="store_true", help="fail if the shipped file differs")
    args = parser.parse_args()
    data = compress(build(args.vocab.read_bytes() if args.vocab else fetch_vocab()))
    if args.check:
        same = OUT.is_file() and OUT.read_bytes() == data
        print(f"{OUT}: {'up to date' if same else 'differs from a fresh build'}")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
