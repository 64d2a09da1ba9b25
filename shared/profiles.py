"""Named codec profiles: one place that turns a name or a manifest entry into a profile."""

from __future__ import annotations

from typing import Any

from shared.avc import AvcProfile
from shared.jpeg import JpegProfile

Profile = JpegProfile | AvcProfile
DEFAULT_PROFILES = {"image": "jpeg-256-q25", "video": "avc-256x144-3fps-5s-qp37"}  # the paper's settings
KINDS = {"jpeg": JpegProfile, "avc": AvcProfile}


def get_profile(name: str) -> Profile:
    """``jpeg-256-q25``, ``jpeg-64-q50-444-ri4``, ``avc-256x144-3fps-5s-qp37`` … -> a profile."""
    kind = name.split("-", 1)[0]
    if kind not in KINDS:
        raise ValueError(f"unknown profile {name!r}: names start with one of {sorted(KINDS)}, e.g. {DEFAULT_PROFILES}")
    return KINDS[kind].from_name(name)


def profile_from_json(data: dict[str, Any]) -> Profile:
    """Rebuild the profile a dataset was written with (its recorded header included)."""
    if data.get("kind") not in KINDS:
        raise ValueError(f"not a codec profile record: kind {data.get('kind')!r}")
    return KINDS[data["kind"]].from_json(data)
