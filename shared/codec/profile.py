"""The one interface every codec profile offers: what both halves may ask of a codec, and nothing else.

Callers hold a ``CodecProfile`` and never ask which codec it is. A codec folder (``jpeg/``, ``avc/``)
implements it with a frozen dataclass in its ``profile.py``; ``registry.py`` knows the codecs by their
``kind``. Adding a codec means one new folder and one line in the registry.

Words used here:
- *stream*: what the model reads and writes: the codec's output minus the bytes that are the same for
  every item of a profile (its ``header``). ``restore`` puts them back.
- *pictures*: RGB uint8 arrays (height x width x 3): the one picture of an image, the frames of a video.
- *units*: what a prompt is cut in and validity is counted in (JPEG: MCUs, AVC: frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from shared.codec.errors import InvalidMediaError

# A source is anything every codec can read media from: encoded bytes or a path (image codecs also take
# a PIL image).
Source = bytes | str | Path


@runtime_checkable
class ByteGrammar(Protocol):
    """A byte automaton over a profile's streams; ``token_constraint`` lifts it to BPE tokens."""

    def start(self) -> Any: ...
    def step(self, state: Any, byte: int) -> Any | None: ...  # None: the byte makes the stream invalid
    def cache_key(self, state: Any) -> Any: ...
    def is_done(self, state: Any) -> bool: ...  # only EOS may follow


class Decoded(Protocol):
    """What ``decode`` made of a stream."""

    @property
    def pictures(self) -> list[np.ndarray]: ...  # as many as decoded; units that failed are filled in
    @property
    def valid_units(self) -> int: ...  # units that decoded cleanly
    @property
    def total_units(self) -> int: ...  # units the profile's picture has, or (video) the stream announces
    @property
    def complete(self) -> bool: ...  # every unit decoded cleanly and the stream ends where it should
    @property
    def stream(self) -> bytes: ...  # the whole, valid stream a viewable file is made from (filled where needed)
    @property
    def filled(self) -> list[np.ndarray]: ...  # per picture: True on the pixels of filled units
    @property
    def facts(self) -> dict[str, Any]: ...  # the codec's own counts, as reported in samples.json


@runtime_checkable
class CodecProfile(Protocol):
    """A codec with its settings (a frozen dataclass per codec): what preprocess, train and the tools use."""

    kind: ClassVar[str]  # the registry key; recorded in every manifest
    modality: ClassVar[str]  # "image" or "video": which inputs it reads, and the paper's defaults
    unit: ClassVar[str]  # "MCU", "frame": what prompts are cut in
    file_suffix: ClassVar[str]  # of the restored codec file (".jpg", ".h264")
    view_suffix: ClassVar[str]  # of the file people open (".jpg", ".mp4")
    sheet_cell: ClassVar[int]  # picture height on a contact sheet, in pixels
    # Where BPE merges must stop: (regex over the tokenizer's Braille text, how a match joins a piece).
    token_boundary: ClassVar[tuple[str, str]]

    # ---- identity ----
    @property
    def name(self) -> str: ...  # encodes every parameter: get_profile(p.name) == p
    @property
    def header(self) -> bytes: ...  # the invariant bytes the stream leaves out
    @property
    def total_units(self) -> int: ...  # units in a whole picture / full-length clip
    def to_json(self) -> dict[str, Any]: ...  # {"name", "kind", "params", "header"}
    @classmethod
    def from_name(cls, name: str) -> CodecProfile: ...  # the profile a name spells
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CodecProfile: ...  # a recorded profile, its header kept

    # ---- media in ----
    def normalize(self, source: Source, *, max_pixels: int | None = None) -> list[np.ndarray]: ...
    def encode_pictures(self, pictures: list[np.ndarray]) -> bytes: ...  # normalised pictures -> stream
    def encode(self, source: Source, *, max_pixels: int | None = None) -> bytes: ...  # normalize + encode_pictures

    # ---- streams out ----
    def restore(self, stream: bytes) -> bytes: ...  # the standard codec file, byte-exact
    def decode(self, stream: bytes, *, strict: bool = False) -> Decoded: ...  # tolerant, or InvalidMediaError
    def viewable(self, stream: bytes) -> bytes: ...  # the file people open (InvalidMediaError: nothing to show)
    def check_viewable(self, file: bytes) -> tuple[str, ...]: ...  # what is wrong with such a file, at its strictest
    def raw_pixel_bytes(self, stream: bytes) -> int: ...  # size of the stream's pictures as raw RGB

    # ---- prompts and grammars ----
    def prompt_units(self, ratio: float) -> int: ...  # units in a prompt of the first ``ratio`` of the media
    def cut_after_units(self, stream: bytes, units: int) -> bytes: ...  # prefix holding the first ``units``
    def prompt(self, stream: bytes, ratio: float) -> bytes: ...  # cut_after_units(stream, prompt_units(ratio))
    def grammar(self) -> ByteGrammar: ...  # the decoding grammar of constrained sampling


@dataclass(frozen=True)
class View:
    """A stream made for people: the file to open, and what decoding found (pictures, facts)."""

    file: bytes | None  # the viewable file (``profile.view_suffix``); None when there is nothing to show
    decoded: Decoded


def view(profile: CodecProfile, stream: bytes) -> View:
    """Decode any stream tolerantly (a model's output too) into what people look at; never raises."""
    decoded = profile.decode(stream)
    return View(viewable_file(profile, decoded.stream), decoded)


def viewable_file(profile: CodecProfile, stream: bytes) -> bytes | None:
    """The file people open, or None when there is nothing to show (not a single frame)."""
    try:
        return profile.viewable(stream)
    except InvalidMediaError:
        return None


def file_problems(profile: CodecProfile, file: bytes | None) -> tuple[str, ...]:
    """What is wrong with a viewable file at its strictest (``check_viewable``); no file is a problem too."""
    return profile.check_viewable(file) if file is not None else ("nothing to show",)
