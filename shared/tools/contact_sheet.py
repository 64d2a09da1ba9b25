"""Contact sheets: a labelled grid of images, or of frame strips for videos, saved as PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shared.format.files import write_atomic

LABEL_HEIGHT = 14
FILL_TINT = np.array([255, 0, 255], np.float32)  # magenta: no codec writes it by itself in a flat block


def mark_filled(picture: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """``picture`` with the pixels ``filled`` masks tinted magenta, half and half: units a file holds as
    filler (grey, or a copy of the previous frame) then stand apart from what a model wrote."""
    if not filled.any():
        return picture
    marked = picture.astype(np.float32)
    marked[filled] = (marked[filled] + FILL_TINT) / 2
    return marked.round().astype(np.uint8)


def strip(pictures: Sequence[Image.Image | np.ndarray], at_most: int = 8) -> list[Image.Image | np.ndarray]:
    """Every n-th picture, so that a video's frames fit a row: one picture stays one picture."""
    return list(pictures[:: max(1, len(pictures) // at_most)])


def contact_sheet(rows: Sequence[tuple[str, Sequence[Image.Image | np.ndarray]]], columns: int = 8,
                  cell: int = 128) -> Image.Image:
    """Lay out labelled items. Each item is ``(label, pictures)``: one picture for an image, a strip for a video.

    Images are placed ``columns`` to a row; an item with several pictures (a video) takes a row of its own.
    """
    def thumbnail(picture: Image.Image | np.ndarray, height: int) -> Image.Image:
        image = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture.convert("RGB")
        width = max(1, round(image.width * height / image.height))
        return image.resize((width, height), Image.Resampling.LANCZOS)

    tiles = []  # (label, thumbnails) with each thumbnail `cell` high
    for label, pictures in rows:
        tiles.append((label, [thumbnail(p, cell) for p in pictures]))
    grid: list[list[tuple[str, list[Image.Image]]]] = [[]]
    for tile in tiles:
        if len(tile[1]) > 1 or len(grid[-1]) == columns:
            grid.append([])
        grid[-1].append(tile)
        if len(tile[1]) > 1:
            grid.append([])
    grid = [row for row in grid if row]
    row_widths = [sum(sum(t.width for t in thumbs) + 4 for _, thumbs in row) for row in grid]
    size = (max(row_widths, default=cell) + 4, len(grid) * (cell + LABEL_HEIGHT + 4) + 4)
    sheet = Image.new("RGB", size, (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    top = 4
    for row in grid:
        left = 4
        for label, thumbs in row:
            draw.text((left, top), label[:max(8, sum(t.width for t in thumbs) // 6)], fill=(230, 230, 230))
            for thumb in thumbs:
                sheet.paste(thumb, (left, top + LABEL_HEIGHT))
                left += thumb.width
            left += 4
        top += cell + LABEL_HEIGHT + 4
    return sheet


def save_contact_sheet(path: str | Path, rows: Sequence[tuple[str, Sequence[Image.Image | np.ndarray]]],
                       columns: int = 8, cell: int = 128) -> Path:
    """Write the sheet as a PNG, atomically."""
    buffer = io.BytesIO()
    contact_sheet(rows, columns, cell).save(buffer, "PNG")
    return write_atomic(path, buffer.getvalue())
