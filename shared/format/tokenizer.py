"""A lossless byte-level BPE over codec streams, built on Hugging Face `tokenizers`.

Each byte b is carried as the character U+2800+b (the Braille block, as in the authors' release):
no byte is whitespace or a control character to a normaliser, and no byte string can spell the
ASCII special tokens, so data can never produce the BOS/EOS ids.

Vocabulary layout (total = ``vocab_size``): ids 0..255 are the bytes themselves, then the merges in
the order they were learned, then BOS and EOS. The saved ``tokenizer.json`` is a standard file that
``tokenizers.Tokenizer.from_file`` loads; its text side is the Braille string (``bytes_to_text``).

Merges never cross a structure boundary, which each codec profile names (``token_boundary``): a JPEG
restart marker ends a pre-token and an AVC NAL start code begins one, so a prompt cut at a marker
tokenizes to a prefix of the full stream's tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

BOS, EOS = "<|bos|>", "<|eos|>"
BYTE_BASE = 0x2800
ALPHABET = [chr(BYTE_BASE + b) for b in range(256)]
# Where merges must stop: (regex over the Braille text, how a match joins a piece), as
# ``pre_tokenizers.Split`` takes them; a codec profile's ``token_boundary``.
Boundary = tuple[str, str]


def bytes_to_text(data: bytes) -> str:
    """Bytes -> the Braille string the tokenizer sees (vectorised: no per-byte Python)."""
    return (np.frombuffer(data, dtype=np.uint8).astype("<u4") + BYTE_BASE).tobytes().decode("utf-32-le")


def text_to_bytes(text: str) -> bytes:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4") - BYTE_BASE
    if codes.size and codes.max() > 255:  # unsigned: also catches characters below the block
        raise ValueError("text holds characters outside the byte alphabet")
    return codes.astype(np.uint8).tobytes()


def _pre_tokenizer(boundary: Boundary | None) -> pre_tokenizers.PreTokenizer | None:
    if boundary is None:
        return None
    pattern, behavior = boundary
    return pre_tokenizers.Split(Regex(pattern), behavior=behavior)


@dataclass
class ByteTokenizer:
    tokenizer: Tokenizer

    def __post_init__(self) -> None:
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.bos_id, self.eos_id = vocab.get(BOS), vocab.get(EOS)
        if self.bos_id is None or self.eos_id is None:
            raise ValueError(f"not a codec-LM tokenizer: {BOS} / {EOS} missing")
        self.vocab_size = len(vocab)
        # id -> bytes it stands for; specials stand for nothing when decoding data
        self.token_bytes = [b""] * self.vocab_size
        for token, index in vocab.items():
            if index not in (self.bos_id, self.eos_id):
                self.token_bytes[index] = text_to_bytes(token)

    # ---- training and files ---------------------------------------------------------------
    @classmethod
    def train(cls, streams: Iterable[bytes], vocab_size: int, *, boundary: Boundary | None,
              show_progress: bool = False) -> ByteTokenizer:
        """Learn ``vocab_size - 258`` merges (256 bytes and BOS/EOS make up the rest).

        With too little data the trainer may stop early; ``vocab_size`` then says what was learned.
        """
        if vocab_size < 258:
            raise ValueError(f"vocab_size must be at least 258 (256 bytes + BOS + EOS), not {vocab_size}")
        scratch = Tokenizer(models.BPE())
        scratch.pre_tokenizer = _pre_tokenizer(boundary)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, initial_alphabet=ALPHABET, limit_alphabet=256,
                                      min_frequency=2, show_progress=show_progress)
        scratch.train_from_iterator((bytes_to_text(s) for s in streams), trainer)
        merges = [tuple(pair) for pair in json.loads(scratch.to_str())["model"]["merges"]]
        # Rebuild with our own id order: byte b is id b, then merges in learned order.
        vocab = {char: b for b, char in enumerate(ALPHABET)}
        for left, right in merges:
            vocab[left + right] = len(vocab)
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tokenizer.pre_tokenizer = _pre_tokenizer(boundary)
        tokenizer.decoder = decoders.Fuse()
        tokenizer.add_special_tokens([AddedToken(BOS, special=True), AddedToken(EOS, special=True)])
        return cls(tokenizer)

    @classmethod
    def from_file(cls, path: str | Path) -> ByteTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, text: str) -> ByteTokenizer:
        return cls(Tokenizer.from_str(text))

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    # ---- encode / decode ------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every id."""
        return np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.uint32)

    def encode(self, data: bytes, bos: bool = False, eos: bool = False) -> np.ndarray:
        return self.encode_batch([data], bos, eos)[0]

    def encode_batch(self, streams: Sequence[bytes], bos: bool = False, eos: bool = False) -> list[np.ndarray]:
        """Tokenize many streams at once in Rust (parallel across streams)."""
        encodings = self.tokenizer.encode_batch_fast([bytes_to_text(s) for s in streams], add_special_tokens=False)
        out = []
        for encoding in encodings:
            ids = np.asarray(encoding.ids, dtype=self.dtype)
            if bos or eos:
                ids = np.concatenate([[self.bos_id] * bos, ids, [self.eos_id] * eos]).astype(self.dtype)
            out.append(ids)
        return out

    def decode(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """Ids -> bytes; BOS/EOS contribute nothing. Raises IndexError on ids outside the vocabulary."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            outside = min(ids) if min(ids) < 0 else max(ids)
            raise IndexError(f"token id {outside} is outside the vocabulary of {self.vocab_size}")
        return b"".join([self.token_bytes[i] for i in ids])
