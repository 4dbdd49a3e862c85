"""A tiny synthetic "metal surface" set for the smoke profile and tests: brushed textures with blob defects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_smoke_images"]


def _texture(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """Grey brushed-metal (kind 0) or granular scale (kind 1) texture in 0..255 float."""
    if kind == 0:
        rows = rng.normal(0, 1, (size, 1)).repeat(size, 1)
        base = 130 + 18 * rows + rng.normal(0, 6, (size, size))
    else:
        g = rng.normal(0, 1, (size // 4 + 1, size // 4 + 1))
        g = np.kron(g, np.ones((4, 4)))[:size, :size]
        base = 110 + 14 * g + rng.normal(0, 8, (size, size))
    return base


def make_smoke_images(
    out_dir: str | Path, n: int = 24, size: int = 96, seed: int = 0, sources: int = 2
) -> tuple[list[Path], dict[str, list[tuple[int, int, int, int]]]]:
    """Write ``n`` PNGs into ``out_dir/source<k>/`` and return (paths, true defect boxes x1,y1,x2,y2 per stem).

    Each image has 0-3 bright or dark elliptic blobs (about one in six images is defect-free), so anomaly maps
    and pseudo-boxes have something to find; existing files are kept (re-runs are free and identical).
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    paths, boxes = [], {}
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        src = i % sources
        img = _texture(rng, size, src % 2)
        n_def = 0 if i % 6 == 5 else int(rng.integers(1, 4))
        bxs = []
        for _ in range(n_def):
            cx, cy = rng.integers(size // 8, size - size // 8, 2)
            rx, ry = rng.integers(max(2, size // 24), max(3, size // 8), 2)
            blob = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            img[blob] += float(rng.choice([-1, 1])) * float(rng.uniform(60, 90))
            ys, xs = np.nonzero(blob)
            bxs.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        stem = f"smoke_{src}_{i:03d}"
        path = out / f"source{src}" / f"{stem}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(path)
        paths.append(path)
        boxes[stem] = bxs
    return paths, boxes
