"""Contact sheets: a labelled grid of crops that a person can judge at a glance (rows faces, columns variants)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]  # [H, W, 3] RGB


def _label(width: int, height: int, text: str, scale: float = 0.4) -> Image:
    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def grid(cells: Sequence[Sequence[Image]], col_labels: Sequence[str], row_labels: Sequence[str] | None = None,
         cell: int = 128, title: str | None = None) -> Image:
    """Rows of equally many images, each resized to `cell` px, with column (and row) labels."""
    label_h, row_w = 18, 90 if row_labels else 0
    header = [_label(row_w, label_h, "")] if row_w else []
    header += [_label(cell, label_h, text) for text in col_labels]
    rows = [np.concatenate(header, 1)]
    for r, row in enumerate(cells):
        parts = [cv2.resize(np.ascontiguousarray(img), (cell, cell), interpolation=cv2.INTER_AREA) for img in row]
        if row_w:
            parts.insert(0, _label(row_w, cell, row_labels[r] if row_labels else ""))
        rows.append(np.concatenate(parts, 1))
    sheet = np.concatenate(rows, 0)
    if title:
        sheet = np.concatenate([_label(sheet.shape[1], 22, title, 0.5), sheet], 0)
    return sheet


def stack(sheets: Sequence[Image], gap: int = 6) -> Image:
    """Sheets one under another (padded to the widest), separated by white gaps."""
    width = max(s.shape[1] for s in sheets)
    parts = []
    for s in sheets:
        pad = np.full((s.shape[0], width - s.shape[1], 3), 255, np.uint8)
        parts += [np.concatenate([s, pad], 1), np.full((gap, width, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], 0)


def save_png(image: Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])):
        raise OSError(f"{path}: could not write the PNG")
    return path
