"""Profile names and JSON records resolve to the right profile; wrong names fail clearly."""

import pytest

from shared.avc import AvcProfile
from shared.jpeg import JpegProfile
from shared.profiles import DEFAULT_PROFILES, get_profile, profile_from_json


def test_default_profiles_are_the_papers() -> None:
    image, video = get_profile(DEFAULT_PROFILES["image"]), get_profile(DEFAULT_PROFILES["video"])
    assert image == JpegProfile(size=256, quality=25, subsampling="4:2:0", restart_interval=1)
    assert video == AvcProfile(width=256, height=144, fps=3, seconds=5, qp=37)


@pytest.mark.parametrize("name", ["jpeg-256-q25", "jpeg-512-q25", "jpeg-64-q90-444-ri2", "avc-256x144-3fps-5s-qp37",
                                  "avc-320x180-6fps-2.5s-qp30"])
def test_names_and_records_round_trip(name: str) -> None:
    profile = get_profile(name)
    assert profile.name == name
    record = profile.to_json()
    assert profile_from_json(record) == profile and profile_from_json(record).header == profile.header


@pytest.mark.parametrize("name, message", [("png-256", "unknown profile"), ("jpeg-256-q25-411", "not a JPEG profile"),
                                           ("avc-256x144", "not an AVC profile")])
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_profile(name)
    with pytest.raises(ValueError, match="not a codec profile record"):
        profile_from_json({"kind": "gif"})
