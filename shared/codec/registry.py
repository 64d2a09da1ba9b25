"""The codecs by kind, profile names and records -> profiles, and the paper's defaults per modality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.codec.avc.profile import AvcProfile
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.profile import CodecProfile

# Every codec, by the kind its profile names start with (and its manifest records carry).
CODECS: dict[str, type[CodecProfile]] = {"jpeg": JpegProfile, "avc": AvcProfile}


@dataclass(frozen=True)
class ModalityDefaults:
    """The paper's settings for one modality (Jpeg-LM, Avc-LM); every one of them is also a flag."""

    profile: str  # codec profile name
    vocab_size: int  # total BPE vocabulary: 256 bytes, merges, BOS and EOS
    seq_len: int  # tokens per packed training sequence


MODALITIES = {
    "image": ModalityDefaults(profile="jpeg-256-q25", vocab_size=320, seq_len=12288),
    "video": ModalityDefaults(profile="avc-256x144-3fps-5s-qp37", vocab_size=1024, seq_len=32768),
}


def get_profile(name: str) -> CodecProfile:
    """``jpeg-256-q25``, ``jpeg-64-q50-444-ri4``, ``avc-256x144-3fps-5s-qp37`` … -> a profile."""
    kind = name.split("-", 1)[0]
    if kind not in CODECS:
        examples = ", ".join(defaults.profile for defaults in MODALITIES.values())
        raise ValueError(f"unknown profile {name!r}: names start with one of {sorted(CODECS)}, e.g. {examples}")
    return CODECS[kind].from_name(name)


def profile_from_json(data: dict[str, Any]) -> CodecProfile:
    """Rebuild the profile a dataset was written with (its recorded header included)."""
    if data.get("kind") not in CODECS:
        raise ValueError(f"not a codec profile record: kind {data.get('kind')!r}")
    return CODECS[data["kind"]].from_json(data)
