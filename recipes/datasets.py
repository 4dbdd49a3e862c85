"""Detection datasets in the formats users have (YOLO txt, Pascal VOC xml, COCO json) → an ultralytics work dir.

A dataset is described by a small YAML "data spec" (or the built-in names ``neu-det`` / ``neu-det-mini``)::

    format: voc                      # yolo | voc | coco
    images: NEU-DET/images           # image folder (searched recursively; images are matched by file stem)
    annotations: NEU-DET/annotations # folder of <stem>.xml / <stem>.txt, a COCO json, or {train: a.json, val: b.json}
    classes: [crazing, inclusion, patches, pitted_surface, rolled-in_scale, scratches]   # or a .txt, one per line
    train: NEU-DET/train.txt         # list file (stems, file names or paths; '#' comments) or an image folder
    val: NEU-DET/val.txt

Relative paths resolve against ``root`` (if given) or the spec file's folder. :func:`prepare_dataset` validates
every annotation first and refuses malformed ones (box outside the image, unknown class, missing or unreadable
image, unparsable file) with a :class:`DatasetError` naming the file; then it writes ``images/<split>/`` (symlinks to
the originals, nothing is copied), ``labels/<split>/<stem>.txt`` and ``data.yaml`` into a work dir. A work dir whose
manifest matches the spec and input files is reused as it is.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from .data import IMAGE_EXTENSIONS, atomic_write_bytes, atomic_write_json, list_images, read_voc_boxes

__all__ = [
    "FORMATS",
    "NEU_DET_CLASSES",
    "DatasetError",
    "DataSpec",
    "Split",
    "load_spec",
    "builtin_spec",
    "resolve_spec",
    "read_class_list",
    "read_split_list",
    "neu_det_mini_stems",
    "load_splits",
    "prepare_dataset",
    "dataset_stats",
    "default_data_root",
    "write_list",
]

FORMATS = ("yolo", "voc", "coco")
NEU_DET_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
NEU_DET_MINI_LIST = Path(__file__).resolve().parent / "data" / "neu_det_mini.txt"
SPLITS = ("train", "val")
_MANIFEST = "agssp_dataset.json"
_FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A dataset spec, list or annotation file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class DataSpec:
    """Where a detection dataset lives and how to read it."""

    format: str
    images: Path
    annotations: Path | dict[str, Path]
    classes: tuple[str, ...]
    splits: dict[str, Path] = field(default_factory=dict)
    name: str = "dataset"

    def __post_init__(self) -> None:
        """Check the format name and that both splits are given somewhere."""
        if self.format not in FORMATS:
            raise DatasetError(f"data spec {self.name!r}: format must be one of {FORMATS}, got {self.format!r}")
        per_split_json = isinstance(self.annotations, dict)
        for split in SPLITS:
            if split not in self.splits and not (per_split_json and split in self.annotations):
                raise DatasetError(f"data spec {self.name!r}: no {split!r} split (a list file or an image folder)")


@dataclass
class Split:
    """One split after validation: image paths and ultralytics label rows ``(cls, xc, yc, w, h)`` normalised."""

    images: list[Path] = field(default_factory=list)
    labels: list[list[tuple[int, float, float, float, float]]] = field(default_factory=list)

    @property
    def num_boxes(self) -> int:
        """Total number of boxes in the split."""
        return sum(len(rows) for rows in self.labels)


# --------------------------------------------------------------------------------------------- spec files


def _resolve(base: Path, value: Any, what: str, source: str) -> Path:
    """A path from the spec, relative to ``base``."""
    if not isinstance(value, (str, os.PathLike)):
        raise DatasetError(f"{source}: {what} must be a path, got {value!r}")
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else base / p


def read_class_list(value: str | Path | Sequence[str], source: str = "data spec") -> tuple[str, ...]:
    """Class names from a list or a text file (one name per line, '#' comments); duplicates are refused."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise DatasetError(f"{path}: class list file not found (from {source})")
        names = [ln.split("#", 1)[0].strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        source = str(path)
    elif isinstance(value, Mapping):  # ultralytics style {0: name, 1: name}
        try:
            names = [str(value[k]) for k in sorted(value, key=int)]
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{source}: class mapping keys must be integers ({e})") from None
    else:
        names = [str(n).strip() for n in value]
    if not names:
        raise DatasetError(f"{source}: empty class list")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{source}: duplicate class names {dup}")
    return tuple(names)


def load_spec(spec: str | Path | Mapping[str, Any], root: str | Path | None = None) -> DataSpec:
    """Parse a data spec from a YAML file or a mapping (paths relative to ``root`` or the file's folder)."""
    if isinstance(spec, Mapping):
        cfg, source, base = dict(spec), "data spec", Path(root) if root else Path.cwd()
    else:
        path = Path(spec)
        if not path.is_file():
            raise DatasetError(f"{path}: data spec not found")
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise DatasetError(f"{path}: invalid YAML ({e})") from None
        if not isinstance(cfg, dict):
            raise DatasetError(f"{path}: a data spec must be a mapping with format/images/annotations/classes/train/val")
        source, base = str(path), path.resolve().parent
        if root is not None:
            base = Path(root)
    if cfg.get("root") is not None:
        base = _resolve(base, cfg["root"], "root", source)
    unknown = set(cfg) - {"format", "images", "annotations", "classes", "train", "val", "root", "name"}
    if unknown:
        raise DatasetError(f"{source}: unknown keys {sorted(unknown)}")
    for key in ("format", "images", "annotations"):
        if cfg.get(key) is None:
            raise DatasetError(f"{source}: missing required key {key!r}")
    fmt = str(cfg["format"]).lower()
    ann = cfg["annotations"]
    annotations: Path | dict[str, Path]
    if isinstance(ann, Mapping):
        if fmt != "coco":
            raise DatasetError(f"{source}: per-split annotations are only for format coco; give one folder")
        annotations = {str(k): _resolve(base, v, f"annotations.{k}", source) for k, v in ann.items()}
        bad = set(annotations) - set(SPLITS)
        if bad:
            raise DatasetError(f"{source}: annotations splits must be train/val, got {sorted(bad)}")
    else:
        annotations = _resolve(base, ann, "annotations", source)
    if cfg.get("classes") is None:
        if fmt != "coco":
            raise DatasetError(f"{source}: 'classes' is required for format {fmt} (the order gives the label ids)")
        classes: tuple[str, ...] = ()
    elif isinstance(cfg["classes"], str):
        classes = read_class_list(_resolve(base, cfg["classes"], "classes", source), source)
    else:
        classes = read_class_list(cfg["classes"], source)
    splits = {s: _resolve(base, cfg[s], s, source) for s in SPLITS if cfg.get(s) is not None}
    name = str(cfg.get("name") or (Path(source).stem if source != "data spec" else "dataset"))
    return DataSpec(fmt, _resolve(base, cfg["images"], "images", source), annotations, classes, splits, name)


def neu_det_mini_stems(train_list: str | Path, per_class: int = 50) -> list[str]:
    """The NEU-DET-mini rule: the ``per_class`` lowest image numbers of each class within ``train_list``."""
    by_class: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for stem in read_split_list(train_list):
        m = re.fullmatch(r"(.+)_(\d+)", stem)
        if m is None:
            raise DatasetError(f"{train_list}: NEU-DET stem {stem!r} is not <class>_<number>")
        by_class[m.group(1)].append((int(m.group(2)), stem))
    out: list[str] = []
    for cls in sorted(by_class):
        items = sorted(by_class[cls])
        if len(items) < per_class:
            raise DatasetError(f"{train_list}: class {cls!r} has {len(items)} images, fewer than {per_class}")
        out.extend(s for _, s in items[:per_class])
    return out


def builtin_spec(name: str, data_root: str | Path) -> DataSpec:
    """Built-in specs: ``neu-det`` (1440/360) and ``neu-det-mini`` (the committed 300-image list / the same val)."""
    root = Path(data_root) / "NEU-DET"
    if not root.is_dir():
        raise DatasetError(f"{root}: NEU-DET not found (pass --data-root or set AGSSP_SHARED_DATA)")
    train = {"neu-det": root / "train.txt", "neu-det-mini": NEU_DET_MINI_LIST}.get(name)
    if train is None:
        raise DatasetError(f"unknown built-in dataset {name!r}; choose neu-det or neu-det-mini, or pass a YAML spec")
    return DataSpec("voc", root / "images", root / "annotations", NEU_DET_CLASSES,
                    {"train": train, "val": root / "val.txt"}, name.replace("-", "_"))


def default_data_root() -> Path:
    """``$AGSSP_SHARED_DATA`` or ``<checkout>/../shared/data``."""
    env = os.environ.get("AGSSP_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def resolve_spec(data: str | Path | Mapping[str, Any] | DataSpec, data_root: str | Path | None = None) -> DataSpec:
    """A :class:`DataSpec` from a spec object, a YAML path, a mapping or a built-in name."""
    if isinstance(data, DataSpec):
        return data
    if isinstance(data, str) and data in ("neu-det", "neu-det-mini"):
        return builtin_spec(data, data_root if data_root is not None else default_data_root())
    return load_spec(data)


# --------------------------------------------------------------------------------------------- lists and images


def read_split_list(path: str | Path) -> list[str]:
    """Entries of a split list: one stem, file name or path per line; blank lines and '#' comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split list not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: split list is not UTF-8 text ({e})") from None
    return [s for s in (ln.split("#", 1)[0].strip() for ln in text.splitlines()) if s]


def _image_index(images: Path) -> dict[str, Path]:
    """Map image stem → path for every image under ``images``; refuses two images with one stem."""
    try:
        files = list_images(images, IMAGE_EXTENSIONS)
    except FileNotFoundError:
        raise DatasetError(f"{images}: image folder not found") from None
    index: dict[str, Path] = {}
    for p in files:
        if p.stem in index:
            raise DatasetError(f"{images}: two images share the stem {p.stem!r}: {index[p.stem]} and {p}")
        index[p.stem] = p
    return index


def _split_stems(split: str, source: Path, index: Mapping[str, Path]) -> list[str]:
    """Stems of a split from a list file or an image folder, each checked to exist in the image index."""
    if source.is_dir():
        stems = [p.stem for p in list_images(source)]
        outside = [s for s in stems if s not in index]
        if outside:
            raise DatasetError(f"{source}: split {split!r} folder holds images outside the images folder, e.g. {outside[0]!r}")
        if not stems:
            raise DatasetError(f"{source}: split {split!r} folder has no images")
        return stems
    stems = []
    for lineno, entry in enumerate(read_split_list(source), 1):
        stem = entry if entry in index else Path(entry).stem
        if stem not in index:
            raise DatasetError(f"{source}: line {lineno}: image {entry!r} of split {split!r} not found in the images folder")
        stems.append(stem)
    dup = sorted({s for s in stems if stems.count(s) > 1}) if len(set(stems)) != len(stems) else []
    if dup:
        raise DatasetError(f"{source}: images listed twice in split {split!r}: {dup[:5]}")
    if not stems:
        raise DatasetError(f"{source}: split {split!r} is empty")
    return stems


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; unreadable files raise ``DatasetError``."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types; ultralytics' Image.open patch adds ImportError
        msg = f"{type(e).__name__}: {e}"
        if isinstance(e.__context__, UnidentifiedImageError):  # e.g. ultralytics' HEIF retry failing to import
            msg = f"UnidentifiedImageError: {e.__context__}"
        raise DatasetError(f"{path}: unreadable image ({msg})") from None
    if w <= 0 or h <= 0:
        raise DatasetError(f"{path}: empty image ({w}x{h})")
    return w, h


def _xyxy_to_row(cls: int, box: Sequence[float], w: int, h: int, file: Path, what: str) -> tuple[int, float, float, float, float]:
    """Check a pixel box lies inside the image and convert it to a normalised YOLO row."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DatasetError(f"{file}: {what}: box {list(box)} has a missing or non-numeric coordinate")
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{file}: {what}: box {list(box)} has zero or negative size")
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
        raise DatasetError(f"{file}: {what}: box [x1, y1, x2, y2] = {[x1, y1, x2, y2]} lies outside the {w}x{h} image")
    return cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h


# --------------------------------------------------------------------------------------------- format readers


def _index_files(folder: Path, suffix: str) -> dict[str, Path]:
    """Map stem → annotation file of one suffix under ``folder`` (recursive); duplicate stems are refused."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: annotation folder not found")
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob(f"*{suffix}")):
        if p.stem in out:
            raise DatasetError(f"{folder}: two annotation files share the stem {p.stem!r}: {out[p.stem]} and {p}")
        out[p.stem] = p
    return out


def _read_voc(xml: Path, image: Path, classes: Sequence[str]) -> list[tuple[int, float, float, float, float]]:
    """Validate one VOC xml against its image and the class list."""
    try:
        boxes, names, (h_decl, w_decl) = read_voc_boxes(xml)
    except (ValueError, AttributeError, OSError) as e:
        msg = str(e)
        raise DatasetError(msg if str(xml) in msg else f"{xml}: unparsable VOC xml ({msg})") from None
    w, h = _image_size(image)
    if (w_decl, h_decl) != (0, 0) and (w_decl, h_decl) != (w, h):
        raise DatasetError(f"{xml}: <size> says {w_decl}x{h_decl} but the image {image} is {w}x{h}")
    rows = []
    for i, (box, name) in enumerate(zip(boxes, names)):
        if name not in classes:
            raise DatasetError(f"{xml}: object {i}: unknown class {name!r} (classes: {list(classes)})")
        rows.append(_xyxy_to_row(classes.index(name), box, w, h, xml, f"object {i} ({name})"))
    return rows


def _read_yolo(txt: Path | None, nc: int) -> list[tuple[int, float, float, float, float]]:
    """Validate one YOLO txt (``cls xc yc w h`` normalised; a missing file means no objects)."""
    if txt is None:
        return []
    try:
        lines = txt.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{txt}: unparsable label file (not UTF-8 text: {e})") from None
    rows = []
    eps = 1e-6
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise DatasetError(f"{txt}: line {lineno}: expected 'class xc yc w h' (5 values), got {len(parts)}"
                               + (" (polygon labels are not supported)" if len(parts) > 5 else ""))
        try:
            cls_f, xc, yc, bw, bh = (float(v) for v in parts)
        except ValueError:
            raise DatasetError(f"{txt}: line {lineno}: non-numeric value in {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in (cls_f, xc, yc, bw, bh)):
            raise DatasetError(f"{txt}: line {lineno}: non-finite value in {line.strip()!r}")
        if cls_f != int(cls_f) or not 0 <= int(cls_f) < nc:
            raise DatasetError(f"{txt}: line {lineno}: unknown class id {parts[0]} (the class list has {nc})")
        if bw <= 0 or bh <= 0:
            raise DatasetError(f"{txt}: line {lineno}: box has zero or negative size")
        if xc - bw / 2 < -eps or yc - bh / 2 < -eps or xc + bw / 2 > 1 + eps or yc + bh / 2 > 1 + eps:
            raise DatasetError(f"{txt}: line {lineno}: box {parts[1:]} lies outside the image (normalised 0..1)")
        rows.append((int(cls_f), xc, yc, bw, bh))
    return rows


def _load_coco(path: Path) -> dict[str, Any]:
    """Read and shape-check a COCO json."""
    if not path.is_file():
        raise DatasetError(f"{path}: COCO annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unparsable COCO json ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{path}: a COCO json needs the lists 'images', 'annotations' and 'categories'")
    return data


def _coco_records(path: Path, classes: Sequence[str], index: Mapping[str, Path], images_root: Path
                  ) -> dict[str, list[tuple[int, float, float, float, float]]]:
    """Stem → validated rows for every image of one COCO json."""
    data = _load_coco(path)
    cat_name: dict[int, str] = {}
    for c in data["categories"]:
        try:
            cat_name[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path}: category entry {c!r} needs an integer 'id' and a 'name'") from None
    for cid, name in cat_name.items():
        if name not in classes:
            raise DatasetError(f"{path}: category {cid} {name!r} is not in the class list {list(classes)}")
    images: dict[int, tuple[str, int, int]] = {}
    for im in data["images"]:
        try:
            iid, fname = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path}: image entry {im!r} needs an integer 'id' and a 'file_name'") from None
        cand = images_root / fname
        stem = cand.stem if cand.is_file() and cand.stem in index else Path(fname).stem
        if stem not in index:
            raise DatasetError(f"{path}: image {iid} file {fname!r} not found under {images_root}")
        w, h = _image_size(index[stem])
        if "width" in im and "height" in im and (int(im["width"]), int(im["height"])) != (w, h):
            raise DatasetError(f"{path}: image {iid} ({fname}) is declared {im['width']}x{im['height']} "
                               f"but the file is {w}x{h}")
        images[iid] = (stem, w, h)
    out: dict[str, list[tuple[int, float, float, float, float]]] = {s: [] for s, _, _ in images.values()}
    for k, a in enumerate(data["annotations"]):
        try:
            iid, cid, bbox = int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path}: annotation #{k} needs image_id, category_id and a numeric bbox") from None
        if len(bbox) != 4:
            raise DatasetError(f"{path}: annotation #{k} (id {a.get('id')}): bbox must be [x, y, w, h]")
        if iid not in images:
            raise DatasetError(f"{path}: annotation #{k} (id {a.get('id')}) refers to unknown image_id {iid}")
        if cid not in cat_name:
            raise DatasetError(f"{path}: annotation #{k} (id {a.get('id')}): unknown category_id {cid}")
        if a.get("iscrowd", 0):
            continue  # crowd regions are not training targets
        stem, w, h = images[iid]
        x, y, bw, bh = bbox
        out[stem].append(_xyxy_to_row(classes.index(cat_name[cid]), (x, y, x + bw, y + bh), w, h, path,
                                      f"annotation #{k} (id {a.get('id')}, image {stem})"))
    return out


def _coco_classes(spec: DataSpec) -> tuple[str, ...]:
    """Class names from the COCO categories (sorted by id) when the spec gives none."""
    if spec.classes:
        return spec.classes
    paths = list(spec.annotations.values()) if isinstance(spec.annotations, dict) else [spec.annotations]
    cats = {int(c["id"]): str(c["name"]) for c in _load_coco(paths[0])["categories"]}
    if not cats:
        raise DatasetError(f"{paths[0]}: no categories and no class list in the data spec")
    return tuple(cats[k] for k in sorted(cats))


def load_splits(spec: DataSpec) -> tuple[tuple[str, ...], dict[str, Split]]:
    """Validate the whole dataset and return the class names and the train/val splits."""
    index = _image_index(spec.images)
    classes = _coco_classes(spec) if spec.format == "coco" else spec.classes
    splits: dict[str, Split] = {}
    coco_all: dict[str, list] | None = None
    files: dict[str, Path] = {}
    if spec.format in ("voc", "yolo"):
        assert isinstance(spec.annotations, Path)
        files = _index_files(spec.annotations, ".xml" if spec.format == "voc" else ".txt")
    for split in SPLITS:
        if spec.format == "coco" and isinstance(spec.annotations, dict) and split in spec.annotations:
            records = _coco_records(spec.annotations[split], classes, index, spec.images)
            stems = _split_stems(split, spec.splits[split], index) if split in spec.splits else list(records)
        else:
            stems = _split_stems(split, spec.splits[split], index)
            if spec.format == "coco":
                if coco_all is None:
                    assert isinstance(spec.annotations, Path)
                    coco_all = _coco_records(spec.annotations, classes, index, spec.images)
                records = coco_all
        out = Split()
        for stem in stems:
            image = index[stem]
            if spec.format == "voc":
                if stem not in files:
                    raise DatasetError(f"{image}: no annotation {stem}.xml under {spec.annotations}")
                rows = _read_voc(files[stem], image, classes)
            elif spec.format == "yolo":
                rows = _read_yolo(files.get(stem), len(classes))
            else:
                if stem not in records:
                    ann = spec.annotations[split] if isinstance(spec.annotations, dict) else spec.annotations
                    raise DatasetError(f"{ann}: image {image.name} of split {split!r} has no entry in the COCO json")
                rows = records[stem]
                _image_size(image)
            out.images.append(image)
            out.labels.append(rows)
        splits[split] = out
    both = {p.stem for p in splits["train"].images} & {p.stem for p in splits["val"].images}
    if both:
        raise DatasetError(f"data spec {spec.name!r}: {len(both)} images are in both train and val, e.g. {sorted(both)[:3]}")
    return classes, splits


# --------------------------------------------------------------------------------------------- work dir


def _fingerprint(spec: DataSpec) -> str:
    """Hash of the spec and the size/mtime of every input file it reads (cheap change detection)."""
    h = hashlib.sha256()
    h.update(json.dumps({"v": _FORMAT_VERSION, "format": spec.format, "classes": spec.classes,
                         "images": str(spec.images.resolve()), "splits": {k: str(v) for k, v in spec.splits.items()},
                         "ann": str(spec.annotations)}, sort_keys=True).encode())
    inputs: list[Path] = list(spec.splits.values())
    ann = spec.annotations
    for p in (list(ann.values()) if isinstance(ann, dict) else [ann]):
        inputs.extend(sorted(p.rglob("*")) if p.is_dir() else [p])
    for p in inputs:
        if p.is_file():
            st = p.stat()
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _link(src: Path, dst: Path) -> None:
    """Symlink ``dst`` → ``src`` (absolute), falling back to a hard link or a copy where symlinks are not allowed."""
    try:
        dst.symlink_to(src.resolve())
    except OSError:  # pragma: no cover - filesystems without symlinks
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def prepare_dataset(data: str | Path | Mapping[str, Any] | DataSpec, work_dir: str | Path,
                    data_root: str | Path | None = None) -> Path:
    """Validate a dataset and write an ultralytics work dir; returns the path of its ``data.yaml``.

    Args:
        data: a :class:`DataSpec`, a YAML spec path, a mapping, or ``neu-det`` / ``neu-det-mini``.
        work_dir: output folder (rebuilt only when the spec or its input files changed).
        data_root: where the built-in datasets live (default ``$AGSSP_SHARED_DATA`` or ``../shared/data``).
    """
    spec = resolve_spec(data, data_root)
    work_dir = Path(work_dir).resolve()
    fp = _fingerprint(spec)
    manifest = work_dir / _MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("fingerprint") == fp and (work_dir / "data.yaml").is_file():
                return work_dir / "data.yaml"
        except json.JSONDecodeError:
            pass
    classes, splits = load_splits(spec)
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=work_dir.parent, prefix=f".{work_dir.name}."))
    try:
        for split, s in splits.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for image, rows in zip(s.images, s.labels):
                _link(image, tmp / "images" / split / f"{image.stem}{image.suffix.lower()}")
                text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows)
                (tmp / "labels" / split / f"{image.stem}.txt").write_text(text)
        data_yaml = {"path": str(work_dir), "train": "images/train", "val": "images/val",
                     "names": dict(enumerate(classes))}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False))
        stats = {k: {"images": len(v.images), "boxes": v.num_boxes} for k, v in splits.items()}
        atomic_write_json(tmp / _MANIFEST, {"fingerprint": fp, "name": spec.name, "format": spec.format,
                                            "classes": list(classes), "splits": stats})
        if work_dir.exists():
            shutil.rmtree(work_dir)
        os.replace(tmp, work_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return work_dir / "data.yaml"


def dataset_stats(work_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared work dir (classes and per-split image/box counts)."""
    return json.loads((Path(work_dir) / _MANIFEST).read_text())


def write_list(path: str | Path, stems: Iterable[str], header: str = "") -> None:
    """Write a split list atomically (optional '#' header lines)."""
    body = "".join(f"# {ln}\n" for ln in header.splitlines()) + "".join(f"{s}\n" for s in stems)
    atomic_write_bytes(Path(path), body.encode())
