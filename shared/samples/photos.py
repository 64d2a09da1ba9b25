"""The embedded sample dataset: real photos that scikit-image and scikit-learn ship in their wheels.

Nothing is downloaded: the files come with the `samples` extra (`pip install codec-lm[samples]`).
Crops are deterministic (seeded), so the demo, the tests and the benchmarks see the same inputs
on every machine.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

# Natural photos, greyscale scans and images with alpha: together they exercise every
# normalisation rule (RGB, L, RGBA; PNG and JPEG sources; portrait, landscape, square).
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg",
    "ihc.png", "logo.png", "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def _package_dir(module: str) -> Path:
    # a top-level package is found without being imported: importing scikit-learn alone takes seconds
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{module} is needed for the embedded sample photos: pip install 'codec-lm[samples]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def sample_photo_paths() -> list[Path]:
    """Paths of the real sample photos, in a fixed order."""
    paths = [_package_dir("skimage") / "data" / name for name in SKIMAGE_PHOTOS]
    paths += [_package_dir("sklearn") / "datasets" / "images" / name for name in SKLEARN_PHOTOS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"sample photos missing from the installed wheels: {missing}")
    return paths


@lru_cache(maxsize=None)
def _photo(index: int) -> tuple[str, Image.Image]:
    path = sample_photo_paths()[index]
    image = Image.open(path)
    image.load()
    return path.stem, image


def sample_count() -> int:
    return len(SKIMAGE_PHOTOS) + len(SKLEARN_PHOTOS)


# Crops are scaled down to at most this side before they are stored: every profile's images are at most
# 256 px, and small PNGs make the sample dataset cheap to generate (~3 ms a crop instead of ~30 ms).
MAX_CROP_SIDE = 256


def sample_crop(index: int, seed: int = 0, min_side: int = 96) -> tuple[str, bytes]:
    """Deterministic crop ``index`` of the sample photos as ``(key, png_bytes)``.

    It takes a random rectangle (side 25-100% of the photo's short side, aspect 3:4 to 4:3, mirrored half
    the time) from the photo chosen round-robin, so crops differ in framing, scale and orientation like a
    web dataset and thousands of them are distinct. Each crop has its own generator seeded by
    ``(seed, index)``: any crop can be made alone, on any worker. The key starts with the photo's name.
    """
    rng = np.random.default_rng([seed, index])
    name, photo = _photo(index % sample_count())
    width, height = photo.size
    side = max(min_side, int(min(width, height) * rng.uniform(0.25, 1.0)))
    aspect = rng.uniform(0.75, 4 / 3)
    crop_w = min(width, int(side * aspect ** 0.5))
    crop_h = min(height, int(side / aspect ** 0.5))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    crop = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = MAX_CROP_SIDE / max(crop_w, crop_h)
    if scale < 1:
        crop = crop.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BOX)
    buffer = io.BytesIO()
    crop.save(buffer, "PNG", compress_level=1)
    return f"{name}-{index:05d}", buffer.getvalue()


def sample_crops(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """The first ``count`` crops of :func:`sample_crop`."""
    return (sample_crop(index, seed) for index in range(count))
