"""Image folders, robust image and mask loading, VOC boxes and manifests with file-list hashes.

Image conversion rules (``load_image``), applied so every stage sees RGB uint8:
- 8-bit grayscale (``L``, ``P`` without alpha) is replicated to three channels;
- 16-/32-bit grayscale (``I;16``, ``I``, ``F``) is scaled linearly from its own min..max to 0..255 (a constant image
  becomes 0), because industrial 16-bit cameras rarely use the full range;
- images with alpha (``RGBA``, ``LA``, ``PA``) are composited onto black (the alpha channel is dropped);
- CMYK/YCbCr and other modes go through PIL's ``convert("RGB")``.
Unreadable, truncated or empty files raise ``ImageLoadError`` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "list_images",
    "check_unique_stems",
    "load_image",
    "load_mask",
    "read_voc_boxes",
    "file_list_hash",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npy",
    "parse_shard",
    "shard",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageLoadError(ValueError):
    """An image or mask file that cannot be decoded or does not fit its image."""


def list_images(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All image files under ``root`` (recursive, sorted by relative path, hidden files skipped)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    exts = {e.lower() for e in extensions}
    files = [
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in exts and not any(s.startswith(".") for s in p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def check_unique_stems(paths: Iterable[Path]) -> None:
    """Raise ``ValueError`` naming the clashing files if two images share a file stem (outputs are ``<stem>.*``)."""
    seen: dict[str, Path] = {}
    for p in paths:
        p = Path(p)
        if p.stem in seen:
            raise ValueError(f"image stems must be unique (outputs are named <stem>.npy/.txt): {seen[p.stem]} and {p}")
        seen[p.stem] = p


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB by the rules in the module docstring."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as an H×W×3 RGB uint8 array (see the module docstring for the conversions)."""
    from PIL import ImageFile

    path = Path(path)
    # other libraries (e.g. ultralytics) switch PIL to silently grey-fill truncated files; refuse them here
    tolerant, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as img:
            img.load()
            rgb = _to_rgb(img)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as e:  # ImportError: ultralytics HEIF hook
        raise ImageLoadError(f"{path}: cannot decode image ({type(e).__name__}: {e}); file corrupt or truncated?") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant
    arr = np.array(rgb, dtype=np.uint8)  # a writable copy
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{path}: empty image of shape {arr.shape}")
    return arr


def load_mask(path: str | Path, size: tuple[int, int] | None = None, threshold: int = 127) -> np.ndarray:
    """Read a defect mask as H×W bool (pixel > ``threshold``; label-index masks use ``threshold=0``).

    ``size`` is the expected (H, W) of the image; a mismatch raises ``ImageLoadError`` naming the mask file.
    Conversions: colour masks count a pixel as defect when any colour channel exceeds the threshold (an alpha
    channel, RGBA / LA, is ignored); 16-bit or 32-bit masks whose values exceed 255 are rescaled to the 8-bit
    range (value / 257) so the threshold means the same; label-index masks (values ≤ 255) are used as they are.
    Anything else (float, more than 4 channels) raises ``ImageLoadError`` naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as m:
            m.load()
            a = np.asarray(m)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as e:  # ImportError: ultralytics HEIF hook
        raise ImageLoadError(f"{path}: cannot decode mask ({type(e).__name__}: {e})") from e
    if a.ndim == 3:
        if a.shape[2] > 4:
            raise ImageLoadError(f"{path}: mask has {a.shape[2]} channels (expected 1, 2, 3 or 4)")
        a = a[..., : 1 if a.shape[2] <= 2 else 3].max(axis=-1)  # L/LA → L, RGB/RGBA → max over colour
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if not np.issubdtype(a.dtype, np.integer):
        raise ImageLoadError(f"{path}: mask has {a.dtype} values; expected an integer (8- or 16-bit) image")
    if a.max(initial=0) > 255:
        a = a.astype(np.int64) // 257
    if size is not None and tuple(a.shape[:2]) != tuple(size):
        raise ImageLoadError(f"{path}: mask is {a.shape[0]}x{a.shape[1]} (H x W) but its image is {size[0]}x{size[1]}")
    return a > threshold


def read_voc_boxes(path: str | Path) -> tuple[list[list[float]], list[str], tuple[int, int]]:
    """Read a Pascal VOC xml: boxes as [x1, y1, x2, y2] pixels, class names and the (H, W) image size."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: invalid VOC xml ({e})") from e
    size = root.find("size")
    hw = (int(size.findtext("height", "0")), int(size.findtext("width", "0"))) if size is not None else (0, 0)
    boxes, names = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{path}: object without <bndbox>")
        boxes.append([float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")])
        names.append(obj.findtext("name", "").strip())
    return boxes, names, hw


def file_list_hash(paths: Iterable[Path], root: Path | None = None) -> str:
    """SHA-256 over the sorted relative paths and sizes of ``paths`` (identifies an input set cheaply)."""
    h = hashlib.sha256()
    rows = []
    for p in paths:
        p = Path(p)
        name = p.relative_to(root).as_posix() if root is not None else p.name
        rows.append(f"{name}\t{p.stat().st_size}")
    for row in sorted(rows):
        h.update(row.encode() + b"\n")
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace`` (never leaves a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(obj: Any) -> Any:
    """Replace NaN/inf floats by ``None`` (strict JSON) in nested dicts and lists."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON atomically (NaN becomes ``null``)."""
    atomic_write_bytes(path, (json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n").encode())


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (the temporary file is renamed into place)."""
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def parse_shard(spec: str | None) -> tuple[int, int]:
    """Parse ``"i/N"`` (0-based ``i``) into ``(i, N)``; ``None`` means ``(0, 1)``."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(s) for s in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < N")
    return i, n


def shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """Every ``count``-th item starting at ``index`` (interleaved shards stay balanced across sub-folders)."""
    return list(items[index::count])
