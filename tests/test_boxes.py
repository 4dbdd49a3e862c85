"""Pseudo-boxes from anomaly maps (method-spec §2): threshold, min area, top-k + NMS, YOLO and COCO outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes.boxes import adaptive_threshold, box_iou, boxes_from_map, maps_to_boxes, match_boxes, nms


def test_threshold_is_mean_of_map_maxima_minus_offset() -> None:
    maps = [np.full((15, 15), 0.2, np.float32), np.full((15, 15), 0.2, np.float32)]
    maps[0][3, 3], maps[1][7, 7] = 1.0, 0.8
    assert adaptive_threshold(maps) == pytest.approx(0.8)


def test_blob_becomes_one_box_at_image_scale_and_small_blobs_drop() -> None:
    m = np.zeros((10, 10), np.float32)
    m[2:5, 6:9] = 1.0  # a 3×3-cell blob in a 10×10 map of a 100×200 (H×W) image
    b, s = boxes_from_map(m, (100, 200), threshold=0.5)
    assert len(b) == 1 and s[0] == pytest.approx(1.0)
    x1, y1, x2, y2 = b[0]
    assert 110 <= x1 <= 125 and 170 <= x2 <= 185 and 10 <= y1 <= 25 and 40 <= y2 <= 50
    tiny = np.zeros((100, 100), np.float32)
    tiny[50:53, 50:53] = 1.0  # 3×3 px = 9 px contour area < the minimum of 10 px
    assert len(boxes_from_map(tiny, (100, 100), 0.5)[0]) == 0


def test_top_k_and_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]], float)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.8) == [0, 2]  # IoU 0.9 ≥ 0.8 suppressed
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.95) == [0, 1, 2]
    m = np.zeros((60, 60), np.float32)
    for i in range(12):
        m[(i // 4) * 20 + 2:(i // 4) * 20 + 8, (i % 4) * 15 + 2:(i % 4) * 15 + 8] = 0.6 + i * 0.01
    b, s = boxes_from_map(m, (60, 60), 0.5)
    assert len(b) == 10 and np.all(np.diff(s) <= 0)
    assert box_iou(np.array([0, 0, 2, 2]), np.array([1, 0, 3, 2]))[0, 0] == pytest.approx(1 / 3)


def test_maps_to_boxes_writes_yolo_coco_and_manifest(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    imgs, maps = tmp_path / "images", tmp_path / "maps"
    imgs.mkdir()
    maps.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((80, 120, 3), np.uint8)).save(imgs / f"im{i}.jpg")
        m = np.zeros((8, 12), np.float32)
        if i < 2:
            m[2:5, 3:7] = 1.0
        np.save(maps / f"im{i}.npy", m)
    man = maps_to_boxes(maps, imgs, tmp_path / "out")
    assert man["threshold"] == pytest.approx(2 / 3 - 0.1) and man["num_boxes"] == 2
    line = (tmp_path / "out" / "labels" / "im0.txt").read_text().split()
    assert line[0] == "0" and all(0 < float(v) <= 1 for v in line[1:])
    assert (tmp_path / "out" / "labels" / "im2.txt").read_text() == ""
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    assert coco.loadCats(0)[0]["name"] == "anomaly" and len(coco.getAnnIds()) == 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["top_k"] == 10
    (maps / "im1.npy").unlink()
    with pytest.raises(FileNotFoundError, match="im1"):
        maps_to_boxes(maps, imgs, tmp_path / "out2")


def test_box_recall_precision() -> None:
    gt = [np.array([[0, 0, 10, 10]]), np.array([[5, 5, 15, 15], [30, 30, 40, 40]])]
    pred = [np.array([[0, 0, 10, 11], [50, 50, 60, 60]]), np.zeros((0, 4))]
    r = match_boxes(pred, gt)
    assert r["recall"] == pytest.approx(1 / 3) and r["precision"] == pytest.approx(1 / 2)
