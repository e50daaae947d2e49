"""Imagefolders of seeded random PNGs for the tests (``DIR/split/class/i.png``)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from PIL import Image


def write_image_folder(root: Path, counts: Mapping[str, int], classes: Sequence[str], size: tuple[int, int]) -> Path:
    """``counts[split]`` RGB images of ``size`` (height, width) per class and split under ``root``."""
    generator = torch.Generator().manual_seed(0)
    for split, count in counts.items():
        for label in classes:
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=generator)
                Image.fromarray(pixels.numpy()).save(root / split / label / f"{i}.png")
    return root
