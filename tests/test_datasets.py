"""Dataset formats (YOLO txt, Pascal VOC xml, COCO json) → ultralytics work dir, and refusal of malformed data."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from recipes.datasets import (
    NEU_DET_MINI_LIST,
    DatasetError,
    dataset_stats,
    load_spec,
    neu_det_mini_stems,
    prepare_dataset,
    read_split_list,
)

CLASSES = ["crack", "pit"]
W, H = 40, 30
# stem -> [(class name, x1, y1, x2, y2)] in pixels
BOXES = {
    "a1": [("crack", 0, 0, 20, 10)],
    "a2": [("pit", 10, 5, 40, 30), ("crack", 2, 2, 6, 8)],
    "b1": [("pit", 4, 4, 14, 24)],
    "b2": [],
}
TRAIN, VAL = ["a1", "a2"], ["b1", "b2"]


def _images(root: Path) -> Path:
    img = root / "images"
    img.mkdir(parents=True)
    for stem in BOXES:
        Image.new("RGB", (W, H), (90, 90, 90)).save(img / f"{stem}.jpg")
    return img


def _lists(root: Path) -> dict[str, str]:
    (root / "train.txt").write_text("# comment\n" + "\n".join(TRAIN) + "\n\n")
    (root / "val.txt").write_text("\n".join(f"{s}.jpg" for s in VAL) + "\n")  # file names work as well as stems
    return {"train": str(root / "train.txt"), "val": str(root / "val.txt")}


def _voc_xml(stem: str, boxes: list, filename: str | None = None, size: tuple[int, int] = (W, H)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2 in boxes
    )
    fname = filename if filename is not None else f"{stem}.jpg"
    return (f"<annotation><filename>{fname}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def make_voc(root: Path) -> dict:
    _images(root)
    ann = root / "xml"
    ann.mkdir()
    for stem, boxes in BOXES.items():
        # NEU-DET quirk: some <filename> fields lack the extension; matching is by file stem
        (ann / f"{stem}.xml").write_text(_voc_xml(stem, boxes, filename=stem if stem == "a2" else None))
    return {"format": "voc", "images": str(root / "images"), "annotations": str(ann), "classes": CLASSES,
            **_lists(root)}


def make_yolo(root: Path) -> dict:
    _images(root)
    ann = root / "labels"
    ann.mkdir()
    for stem, boxes in BOXES.items():
        if not boxes:
            continue  # a missing label file means "no objects" in YOLO format
        rows = [f"{CLASSES.index(n)} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H}"
                for n, x1, y1, x2, y2 in boxes]
        (ann / f"{stem}.txt").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"format": "yolo", "images": str(root / "images"), "annotations": str(ann),
            "classes": str(root / "classes.txt"), **_lists(root)}


def _coco(stems: list[str]) -> dict:
    images, anns = [], []
    for i, stem in enumerate(stems, 1):
        images.append({"id": i, "file_name": f"{stem}.jpg", "width": W, "height": H})
        for n, x1, y1, x2, y2 in BOXES[stem]:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 10 + CLASSES.index(n),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": [{"id": 10, "name": "crack"}, {"id": 11, "name": "pit"}]}


def make_coco(root: Path, per_split: bool = False) -> dict:
    _images(root)
    if per_split:
        for split, stems in (("train", TRAIN), ("val", VAL)):
            (root / f"{split}.json").write_text(json.dumps(_coco(stems)))
        return {"format": "coco", "images": str(root / "images"),
                "annotations": {"train": str(root / "train.json"), "val": str(root / "val.json")}}
    (root / "all.json").write_text(json.dumps(_coco(list(BOXES))))
    return {"format": "coco", "images": str(root / "images"), "annotations": str(root / "all.json"), **_lists(root)}


def _expected_rows(stem: str) -> list[list[float]]:
    return sorted([[CLASSES.index(n), (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H]
                   for n, x1, y1, x2, y2 in BOXES[stem]])


def _check_work_dir(data_yaml: Path) -> None:
    cfg = yaml.safe_load(data_yaml.read_text())
    root = Path(cfg["path"])
    assert cfg["names"] == dict(enumerate(CLASSES))
    for split, stems in (("train", TRAIN), ("val", VAL)):
        imgs = sorted((root / cfg[split]).iterdir())
        assert [p.stem for p in imgs] == sorted(stems)
        assert all(p.is_symlink() and not p.resolve().is_relative_to(root) for p in imgs)  # linked, not copied
        for stem in stems:
            text = (root / "labels" / split / f"{stem}.txt").read_text()
            rows = sorted([float(v) for v in ln.split()] for ln in text.splitlines())
            expected = _expected_rows(stem)
            assert len(rows) == len(expected)
            for got, want in zip(rows, expected):
                assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("make", [make_voc, make_yolo, make_coco, lambda r: make_coco(r, per_split=True)],
                         ids=["voc", "yolo", "coco", "coco-per-split"])
def test_formats_convert_to_ultralytics(tmp_path: Path, make) -> None:
    spec = make(tmp_path / "src")
    data_yaml = prepare_dataset(spec, tmp_path / "work")
    _check_work_dir(data_yaml)
    stats = dataset_stats(data_yaml.parent)
    assert stats["splits"]["train"] == {"images": 2, "boxes": 3}
    assert stats["splits"]["val"] == {"images": 2, "boxes": 1}


def test_yaml_spec_with_relative_paths_and_reuse(tmp_path: Path) -> None:
    spec = make_voc(tmp_path)
    rel = {k: (Path(v).name if isinstance(v, str) and k != "format" else v) for k, v in spec.items()}
    rel["images"], rel["annotations"] = "images", "xml"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(rel))
    loaded = load_spec(tmp_path / "spec.yaml")
    assert loaded.images == tmp_path / "images" and loaded.classes == tuple(CLASSES)
    data_yaml = prepare_dataset(tmp_path / "spec.yaml", tmp_path / "work")
    stamp = data_yaml.stat().st_mtime_ns
    assert prepare_dataset(tmp_path / "spec.yaml", tmp_path / "work").stat().st_mtime_ns == stamp  # reused
    (tmp_path / "xml" / "a1.xml").write_text(_voc_xml("a1", [("pit", 1, 1, 5, 5)]))  # an input changed
    data_yaml = prepare_dataset(tmp_path / "spec.yaml", tmp_path / "work")
    assert (data_yaml.parent / "labels" / "train" / "a1.txt").read_text().startswith("1 ")


def test_coco_classes_default_to_categories(tmp_path: Path) -> None:
    data_yaml = prepare_dataset(make_coco(tmp_path), tmp_path / "work")
    assert yaml.safe_load(data_yaml.read_text())["names"] == {0: "crack", 1: "pit"}


# ------------------------------------------------------------------------------------------------ malformed input


def _voc_broken(root: Path, kind: str) -> tuple[dict, str]:
    spec = make_voc(root)
    xml = root / "xml" / "a1.xml"
    if kind == "outside":
        xml.write_text(_voc_xml("a1", [("crack", 10, 10, W + 5, 20)]))
    elif kind == "unknown_class":
        xml.write_text(_voc_xml("a1", [("dent", 1, 1, 5, 5)]))
    elif kind == "unparsable":
        xml.write_text("<annotation><object>")
    elif kind == "size_mismatch":
        xml.write_text(_voc_xml("a1", [("crack", 1, 1, 5, 5)], size=(200, 200)))
    elif kind == "missing_annotation":
        xml.unlink()
        return spec, "a1.jpg"
    return spec, "a1.xml"


def _yolo_broken(root: Path, kind: str) -> tuple[dict, str]:
    spec = make_yolo(root)
    txt = root / "labels" / "a1.txt"
    txt.write_text({"outside": "0 0.9 0.5 0.4 0.2\n", "unknown_class": "7 0.5 0.5 0.2 0.2\n",
                    "unparsable": "0 0.5 zero 0.2 0.2\n", "polygon": "0 0.1 0.1 0.2 0.1 0.2 0.2\n"}[kind])
    return spec, "a1.txt"


def _coco_broken(root: Path, kind: str) -> tuple[dict, str]:
    spec = make_coco(root)
    path = root / "all.json"
    data = json.loads(path.read_text())
    if kind == "outside":
        data["annotations"][0]["bbox"] = [30, 0, 20, 10]
    elif kind == "unknown_class":
        data["annotations"][0]["category_id"] = 99
    elif kind == "missing_image":
        data["images"][0]["file_name"] = "nowhere.jpg"
    elif kind == "unparsable":
        path.write_text("{not json")
        return spec, "all.json"
    path.write_text(json.dumps(data))
    return spec, "all.json"


@pytest.mark.parametrize(
    "maker,kind,words",
    [
        (_voc_broken, "outside", "outside"),
        (_voc_broken, "unknown_class", "unknown class 'dent'"),
        (_voc_broken, "unparsable", "VOC xml"),
        (_voc_broken, "size_mismatch", "200x200"),
        (_voc_broken, "missing_annotation", "no annotation"),
        (_yolo_broken, "outside", "outside"),
        (_yolo_broken, "unknown_class", "unknown class id 7"),
        (_yolo_broken, "unparsable", "non-numeric"),
        (_yolo_broken, "polygon", "polygon"),
        (_coco_broken, "outside", "outside"),
        (_coco_broken, "unknown_class", "unknown category_id 99"),
        (_coco_broken, "missing_image", "nowhere.jpg"),
        (_coco_broken, "unparsable", "unparsable COCO json"),
    ],
)
def test_malformed_annotations_are_refused_naming_the_file(tmp_path: Path, maker, kind: str, words: str) -> None:
    spec, culprit = maker(tmp_path / "src", kind)
    with pytest.raises(DatasetError) as err:
        prepare_dataset(spec, tmp_path / "work")
    assert culprit in str(err.value) and words in str(err.value)
    assert not (tmp_path / "work").exists()  # nothing half-written


def test_missing_and_unreadable_images_are_refused(tmp_path: Path) -> None:
    spec = make_voc(tmp_path)
    (tmp_path / "train.txt").write_text("a1\nghost\n")
    with pytest.raises(DatasetError, match=r"train\.txt: line 2: image 'ghost'"):
        prepare_dataset(spec, tmp_path / "work")
    (tmp_path / "train.txt").write_text("a1\na2\n")
    (tmp_path / "images" / "a2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"a2\.jpg: unreadable image"):
        prepare_dataset(spec, tmp_path / "work")


def test_split_overlap_and_spec_errors(tmp_path: Path) -> None:
    spec = make_voc(tmp_path)
    (tmp_path / "val.txt").write_text("b1\na1\n")
    with pytest.raises(DatasetError, match="both train and val"):
        prepare_dataset(spec, tmp_path / "work")
    with pytest.raises(DatasetError, match="format must be one of"):
        load_spec({**spec, "format": "pascal"})
    with pytest.raises(DatasetError, match="'classes' is required"):
        load_spec({k: v for k, v in spec.items() if k != "classes"})
    with pytest.raises(DatasetError, match="duplicate class names"):
        load_spec({**spec, "classes": ["crack", "crack"]})
    with pytest.raises(DatasetError, match="no 'val' split"):
        load_spec({k: v for k, v in spec.items() if k != "val"})


# ------------------------------------------------------------------------------------------------ real NEU-DET


def test_neu_det_mini_list_follows_its_rule(shared_data: Path) -> None:
    committed = read_split_list(NEU_DET_MINI_LIST)
    assert committed == neu_det_mini_stems(shared_data / "NEU-DET" / "train.txt")
    assert len(committed) == len(set(committed)) == 300
    assert set(Counter(s.rsplit("_", 1)[0] for s in committed).values()) == {50}
    assert not set(committed) & set(read_split_list(shared_data / "NEU-DET" / "val.txt"))


def test_neu_det_mini_prepares_with_real_annotations(shared_data: Path, tmp_path: Path) -> None:
    data_yaml = prepare_dataset("neu-det-mini", tmp_path / "neu", data_root=shared_data)
    stats = dataset_stats(data_yaml.parent)
    assert stats["classes"] == ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    assert stats["splits"]["train"]["images"] == 300 and stats["splits"]["val"]["images"] == 360
    # NEU-DET xml <filename> fields without '.jpg' (e.g. patches_20) are matched by stem
    assert (data_yaml.parent / "labels" / "val" / "patches_20.txt").stat().st_size > 0


def test_split_given_as_image_folders(tmp_path: Path) -> None:
    spec = make_yolo(tmp_path)
    for split, stems in (("train", TRAIN), ("val", VAL)):
        (tmp_path / "images" / split).mkdir()
        for stem in stems:
            (tmp_path / "images" / f"{stem}.jpg").rename(tmp_path / "images" / split / f"{stem}.jpg")
    spec.update(train=str(tmp_path / "images" / "train"), val=str(tmp_path / "images" / "val"))
    _check_work_dir(prepare_dataset(spec, tmp_path / "work"))
