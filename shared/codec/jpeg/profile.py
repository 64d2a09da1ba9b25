"""The JPEG codec profile: image -> stripped stream -> byte-exact standard JPEG file -> image.

A profile's invariant header (SOI, JFIF, DQT, SOF0, DHT, DRI, SOS: ~600 bytes at 256x256 q25) is
computed by encoding one grey image with the profile's settings; it is the same for every image.
The *stream* is what varies: the entropy-coded data after SOS, up to but not including EOI.
``restore(stream) = header + stream + EOI`` is byte-identical to Pillow's full encode.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from shared.codec.errors import InvalidMediaError
from shared.codec.jpeg.entropy import EOI, RESTART_MARKER, ScanLayout, check_stream, neutral_interval, parse_header
from shared.codec.jpeg.grammar import JpegGrammar
from shared.codec.normalize_image import ImageSource, normalize_image

SUBSAMPLINGS = {"4:4:4": "444", "4:2:2": "422", "4:2:0": "420"}
NAME = re.compile(
    r"jpeg-(?P<size>\d+)-q(?P<quality>\d+)(?:-(?P<subsampling>444|422|420))?(?:-ri(?P<restart_interval>\d+))?"
)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # always size x size RGB; MCUs that did not decode are mid-grey
    valid_mcus: int  # MCUs whose entropy-coded data decoded without error
    total_mcus: int
    problems: tuple[str, ...]  # empty when the stream is a complete, valid image
    stream: bytes  # what was decoded: the input when it is valid, else the repaired stream (restore() it for a file)
    written_mcus: int  # MCUs of the restart intervals the stream holds, valid or not
    filled: list[np.ndarray]  # one mask: True on the pixels of MCUs filled grey

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def pictures(self) -> list[np.ndarray]:
        return [np.asarray(self.image)]

    @property
    def valid_units(self) -> int:
        return self.valid_mcus

    @property
    def total_units(self) -> int:
        return self.total_mcus

    @property
    def facts(self) -> dict[str, Any]:
        return {"mcus_valid": self.valid_mcus, "mcus_total": self.total_mcus, "clean": self.complete,
                # the file: the stream's valid intervals, every other MCU filled grey
                "mcus_written": self.written_mcus, "mcus_filled": self.total_mcus - self.valid_mcus,
                "mcus_dropped": self.written_mcus - self.valid_mcus}


@dataclass(frozen=True)
class JpegProfile:
    size: int = 256
    quality: int = 25
    subsampling: str = "4:2:0"
    restart_interval: int = 1  # MCUs between restart markers; 0 = none (then no prompt cuts)
    recorded_header: bytes | None = field(default=None, repr=False, compare=False)  # from a manifest
    kind: ClassVar[str] = "jpeg"
    modality: ClassVar[str] = "image"
    unit: ClassVar[str] = "MCU"
    file_suffix: ClassVar[str] = ".jpg"
    view_suffix: ClassVar[str] = ".jpg"
    sheet_cell: ClassVar[int] = 128
    # FF D0..D7 ends an interval
    token_boundary: ClassVar[tuple[str, str]] = (r"\u28ff[\u28d0-\u28d7]", "merged_with_previous")

    def __post_init__(self) -> None:
        if self.subsampling not in SUBSAMPLINGS:
            raise ValueError(f"subsampling must be one of {sorted(SUBSAMPLINGS)}, not {self.subsampling!r}")
        if not 8 <= self.size <= 65500 or self.size % 8:
            raise ValueError(f"size must be a multiple of 8 in 8..65500, not {self.size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, not {self.quality}")
        if not 0 <= self.restart_interval <= 65535:
            raise ValueError(f"restart_interval must be in 0..65535, not {self.restart_interval}")

    # ---- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        name = f"jpeg-{self.size}-q{self.quality}"
        if self.subsampling != "4:2:0":
            name += f"-{SUBSAMPLINGS[self.subsampling]}"
        if self.restart_interval != 1:
            name += f"-ri{self.restart_interval}"
        return name

    @classmethod
    def from_name(cls, name: str) -> JpegProfile:
        match = NAME.fullmatch(name)
        if not match:
            raise ValueError(f"not a JPEG profile name: {name!r} (expected e.g. jpeg-256-q25, jpeg-64-q50-444-ri4)")
        sub = {v: k for k, v in SUBSAMPLINGS.items()}[match["subsampling"] or "420"]
        ri = int(match["restart_interval"]) if match["restart_interval"] is not None else 1
        return cls(int(match["size"]), int(match["quality"]), sub, ri)

    def to_json(self) -> dict[str, Any]:
        params = {"size": self.size, "quality": self.quality, "subsampling": self.subsampling,
                  "restart_interval": self.restart_interval}
        return {"name": self.name, "kind": self.kind, "params": params, "header": self.header.hex()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JpegProfile:
        """Rebuild a recorded profile; its recorded header wins, so old datasets restore byte-exactly."""
        profile = cls(**data["params"])
        recorded = bytes.fromhex(data["header"])
        if recorded != profile.header:
            warnings.warn(f"{profile.name}: this Pillow/libjpeg computes a different header than the recorded one; "
                          "restoring with the recorded header", stacklevel=2)
        return cls(**data["params"], recorded_header=recorded)

    # ---- invariant bytes ------------------------------------------------------------------
    def _save_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"quality": self.quality, "subsampling": self.subsampling}
        if self.restart_interval:
            options["restart_marker_blocks"] = self.restart_interval
        return options

    def _encode_file(self, image: Image.Image) -> bytes:
        if image.info:  # Pillow would carry a source's comment/EXIF/ICC into the file's header
            image = image.copy()
            image.info = {}
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **self._save_options())
        return buffer.getvalue()

    @cached_property
    def computed_header(self) -> bytes:
        grey = Image.new("RGB", (self.size, self.size), (128, 128, 128))
        full = self._encode_file(grey)
        return full[:_scan_start(full)]

    @property
    def header(self) -> bytes:
        return self.recorded_header if self.recorded_header is not None else self.computed_header

    @cached_property
    def layout(self) -> ScanLayout:
        return parse_header(self.header)

    @property
    def total_mcus(self) -> int:
        return self.layout.mcus

    total_units = total_mcus  # the interface's name: a JPEG's units are its MCUs

    # ---- encode / restore / decode --------------------------------------------------------
    def normalize_image(self, source: ImageSource | Image.Image, max_pixels: int | None = None) -> Image.Image:
        """The ``size`` x ``size`` RGB image a source becomes (see ``normalize_image.py``)."""
        return normalize_image(source, self.size, max_pixels)

    def normalize(self, source: ImageSource | Image.Image, *, max_pixels: int | None = None) -> list[np.ndarray]:
        return [np.asarray(self.normalize_image(source, max_pixels))]

    def encode_image(self, image: Image.Image) -> bytes:
        """Stream of an already normalised ``size`` x ``size`` RGB image."""
        if image.size != (self.size, self.size) or image.mode != "RGB":
            raise ValueError(f"encode_image needs a {self.size}x{self.size} RGB image, got {image.size} {image.mode}")
        full = self._encode_file(image)
        header = self.header
        if not full.startswith(header) or not full.endswith(EOI):
            raise RuntimeError(f"{self.name}: Pillow wrote a header that differs from the profile's; "
                               "the installed Pillow/libjpeg does not match the one this profile was recorded with")
        return full[len(header):-len(EOI)]

    def encode_pictures(self, pictures: list[np.ndarray]) -> bytes:
        if len(pictures) != 1:
            raise ValueError(f"{self.name} encodes one picture, got {len(pictures)}")
        return self.encode_image(Image.fromarray(pictures[0]))

    def encode(self, source: ImageSource | Image.Image, *, max_pixels: int | None = None) -> bytes:
        """Any Pillow-readable image (bytes, path, file, PIL image) -> stream."""
        return self.encode_image(self.normalize_image(source, max_pixels))

    def restore(self, stream: bytes) -> bytes:
        """The standard baseline JPEG file: header + stream + EOI."""
        return self.header + stream + EOI

    def viewable(self, stream: bytes) -> bytes:
        return self.restore(stream)

    def check_viewable(self, file: bytes) -> tuple[str, ...]:
        """What is wrong with a JPEG file made by ``viewable``, judged from the file itself: the profile's
        header, EOI at the end, every restart interval between them valid (the strict entropy-level check),
        and Pillow decodes it. Empty when the file is sound."""
        if not file.startswith(self.header) or not file.endswith(EOI) or len(file) < len(self.header) + len(EOI):
            return ("not the profile's header, a stream and EOI",)
        problems = check_stream(self.layout, file[len(self.header):-len(EOI)]).problems
        if not problems:
            try:
                with Image.open(io.BytesIO(file)) as image:
                    image.load()
            except OSError as error:
                problems = (f"Pillow cannot decode it ({error})",)
        return problems

    def raw_pixel_bytes(self, stream: bytes) -> int:
        return self.size * self.size * 3

    def decode(self, stream: bytes, *, strict: bool = False) -> DecodedImage:
        """Stream -> image. Tolerant by default: bad or missing restart intervals become grey.

        With ``strict`` any problem (an interval that does not entropy-decode, a truncated stream,
        misordered markers, trailing data) raises InvalidMediaError.
        """
        check = check_stream(self.layout, stream)
        if strict and not check.ok:
            raise InvalidMediaError("invalid-stream", "; ".join(check.problems))
        if check.ok:
            repaired = stream
        else:  # keep valid intervals, fill the rest with grey, rewrite the markers in order
            layout = self.layout
            padded = check.intervals + (b"",) * (layout.intervals - len(check.intervals))
            valid = [i < len(check.valid) and check.valid[i] for i in range(len(padded))]
            pieces = [piece if valid[i] else neutral_interval(layout, layout.interval_mcus(i))
                      for i, piece in enumerate(padded)]
            repaired = pieces[0]
            for index, piece in enumerate(pieces[1:]):
                repaired += bytes((0xFF, 0xD0 + index % 8)) + piece
        with Image.open(io.BytesIO(self.restore(repaired))) as image:
            image.load()
            decoded = image.convert("RGB")
        layout = self.layout
        written = sum(layout.interval_mcus(index) for index in range(len(check.intervals)))
        filled = np.zeros((self.size, self.size), bool)
        if not check.ok:
            mcu_width, mcu_height = {"4:4:4": (8, 8), "4:2:2": (16, 8), "4:2:0": (16, 16)}[self.subsampling]
            across = -(-self.size // mcu_width)  # a partial MCU at the right edge counts
            valid = check.valid + (False,) * (layout.intervals - len(check.valid))
            for mcu in range(layout.mcus):
                if not valid[mcu // layout.restart_interval if layout.restart_interval else 0]:
                    top, left = mcu // across * mcu_height, mcu % across * mcu_width
                    filled[top:top + mcu_height, left:left + mcu_width] = True
        return DecodedImage(decoded, check.valid_mcus, layout.mcus, check.problems, repaired, written, [filled])

    # ---- prompts --------------------------------------------------------------------------
    def cut_after_units(self, stream: bytes, units: int) -> bytes:
        """Prefix of ``stream`` that ends right after MCU ``units`` (including its restart marker)."""
        layout = self.layout
        if units >= layout.mcus:
            return stream
        if units <= 0:
            return b""
        if not layout.restart_interval or units % layout.restart_interval:
            raise ValueError(f"{self.name}: a cut must fall on a restart marker (every {layout.restart_interval} MCUs)")
        wanted = units // layout.restart_interval
        for count, match in enumerate(RESTART_MARKER.finditer(stream), start=1):
            if count == wanted:
                return stream[:match.end()]
        return stream  # shorter than the cut: the whole stream is the prompt

    def prompt_units(self, ratio: float) -> int:
        """MCUs in a prompt of ``ratio``: the first ``ratio`` of the image, in whole restart intervals.

        At 256x256 (256 MCUs, a restart marker after each) and every ratio that is a multiple of 1/32
        (0.25, 0.5, 0.75 …) this is the authors' cut: right after the ``int(32*r)``-th FF D7. Unlike
        their groups of 8 markers it also gives small profiles real prompts (64x64: 4 MCUs at 0.25).
        """
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"prompt ratio must be in [0, 1], not {ratio}")
        if not self.restart_interval:
            raise ValueError(
                f"{self.name} has no restart markers, so a prompt cannot be cut; use restart_interval >= 1"
            )
        if ratio == 1.0:
            return self.layout.mcus  # the last interval may be short
        intervals = math.floor(ratio * self.layout.mcus + 1e-9) // self.restart_interval  # 0.29 * 100 is 28.999…
        return min(self.layout.mcus, intervals * self.restart_interval)

    def prompt(self, stream: bytes, ratio: float) -> bytes:
        return self.cut_after_units(stream, self.prompt_units(ratio))

    def grammar(self) -> JpegGrammar:
        return JpegGrammar(self.layout)


def _scan_start(jpeg: bytes) -> int:
    """Offset of the first entropy-coded byte: just after the SOS segment."""
    position = 2
    while position + 4 <= len(jpeg) and jpeg[position] == 0xFF:
        marker = jpeg[position + 1]
        length = int.from_bytes(jpeg[position + 2:position + 4], "big")
        position += 2 + length
        if marker == 0xDA:
            return position
    raise ValueError("no SOS segment in the JPEG")
