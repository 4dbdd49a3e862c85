"""Anomaly-map and pseudo-box quality on real data (README numbers): writes results/anomaly_maps*.json and PNGs.

Subsets (fixed by rule):
- Magnetic-Tile: every defect image (5 classes) + every 4th MT_Free image; the 4 few-shot normals are MT_Free
  images at sorted positions 0, N/4, N/2, 3N/4 (excluded from the evaluation set).
- NEU-Seg: the test split (447 images), zero-shot, defect = label > 0.
- NEU-DET: the val split (360 images), zero-shot maps → pseudo-boxes vs the VOC boxes.
Usage: python benchmarks/anomaly_maps.py [--data ../shared/data] [--out results] [--work /tmp/agssp-anomaly-bench]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.anomaly.cli import generate_maps  # noqa: E402
from recipes.anomaly.evaluate import evaluate_maps, save_overlay  # noqa: E402
from recipes.boxes import boxes_from_map, match_boxes, maps_to_boxes  # noqa: E402
from recipes.data import atomic_write_json, load_image, load_mask, read_voc_boxes  # noqa: E402


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """Bounding boxes [x1, y1, x2, y2) of the 8-connected components of a boolean mask."""
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    return np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(lab) if s],
                    dtype=np.float64).reshape(-1, 4)


def box_eval(maps_dir: Path, images: list[Path], gts: list[np.ndarray], out: Path) -> dict:
    """Pseudo-boxes with the adaptive threshold, scored against ground-truth boxes at IoU 0.5."""
    man = maps_to_boxes(maps_dir, images, out)
    preds = []
    for p in images:
        h, w = load_image(p).shape[:2]
        b, _ = boxes_from_map(np.load(maps_dir / f"{p.stem}.npy"), (h, w), man["threshold"])
        preds.append(b)
    return {"threshold": man["threshold"], "max_mean": man["max_mean"], **match_boxes(preds, gts, 0.5)}


def main() -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--work", type=Path, default=Path("/tmp/agssp-anomaly-bench"))
    ap.add_argument("--zero-shot", default="self")
    ap.add_argument("--box-level", type=float, default=0.9, help="CLIP-free calibration (see recipes/anomaly/clipfree.py)")
    ap.add_argument("--every", type=int, default=1, help="evaluate every k-th image of each subset (quick runs)")
    a = ap.parse_args()
    res: dict = {"every": a.every, "protocol": __doc__.strip().splitlines()[2:6], "command": " ".join(sys.argv),
                 "date": dt.date.today().isoformat(),
                 "machine": f"{platform.machine()} {platform.processor() or ''} torch threads=default".strip()}
    opts = {"zero_shot": a.zero_shot, "box_level": a.box_level}
    import torch

    res["machine"] = f"{platform.machine()} torch threads={torch.get_num_threads()}, load average at start " \
                     f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared)"

    # Magnetic-Tile, 4 normal shots
    mt = a.data / "Magnetic-Tile-Defect"
    free = sorted((mt / "images" / "MT_Free").glob("*.jpg"))
    shots = [free[i * len(free) // 4] for i in range(4)]
    free_eval = [p for p in free[::4] if p not in shots]
    defect = [p for c in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
              for p in sorted((mt / "images" / c).glob("*.jpg"))]
    defect, free_eval = defect[:: a.every], free_eval[:: a.every]
    mt_images = defect + free_eval
    t = time.perf_counter()
    man = json.loads(generate_maps(mt_images, a.work / "mt", "clipfree", normals=shots, options=opts).read_text())
    mt_s = time.perf_counter() - t
    maps = [np.load(a.work / "mt" / f"{p.stem}.npy") for p in mt_images]
    masks = [load_mask(mt / "masks" / p.parent.name / f"{p.stem}.png") if p.parent.name != "MT_Free" else None
             for p in mt_images]
    res["magnetic_tile_4shot"] = {**evaluate_maps(maps, masks), "normals": [p.name for p in shots],
                                  "images_per_s": man["images_per_s"], "wall_s": round(mt_s, 1),
                                  "per_class_pixel_auroc": {}}
    for c in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"):
        idx = [i for i, p in enumerate(mt_images) if p.parent.name == c]
        res["magnetic_tile_4shot"]["per_class_pixel_auroc"][c] = evaluate_maps(
            [maps[i] for i in idx], [masks[i] for i in idx])["pixel_auroc"]
    gts = [mask_boxes(m) for m in masks[: len(defect)]]
    res["magnetic_tile_boxes"] = box_eval(a.work / "mt", defect, gts, a.work / "mt_boxes")

    # NEU-Seg test, zero-shot
    seg = a.data / "NEU-Seg"
    stems = (seg / "ImageSets" / "Segmentation" / "test.txt").read_text().split()
    stems = stems[:: a.every]
    seg_images = [seg / "images" / "test" / f"{s}.jpg" for s in stems]
    t = time.perf_counter()
    man = json.loads(generate_maps(seg_images, a.work / "neuseg", "clipfree", options=opts).read_text())
    seg_s = time.perf_counter() - t
    seg_maps = [np.load(a.work / "neuseg" / f"{s}.npy") for s in stems]
    seg_masks = [load_mask(seg / "masks" / "test" / f"{s}.png", threshold=0) for s in stems]
    res["neu_seg_test_zero_shot"] = {**evaluate_maps(seg_maps, seg_masks), "images_per_s": man["images_per_s"],
                                     "wall_s": round(seg_s, 1)}

    # NEU-DET val, zero-shot maps → boxes
    det = a.data / "NEU-DET"
    val = (det / "val.txt").read_text().split()
    det_images = [det / "images" / (s if s.endswith(".jpg") else f"{s}.jpg") for s in val]
    det_images = [p for p in det_images if p.exists()][:: a.every]
    generate_maps(det_images, a.work / "neudet", "clipfree", options=opts)
    gts = [np.array(read_voc_boxes(det / "annotations" / f"{p.stem}.xml")[0]).reshape(-1, 4) for p in det_images]
    res["neu_det_val_boxes"] = box_eval(a.work / "neudet", det_images, gts, a.work / "neudet_boxes")

    # overlays (full runs only, so quick --every runs never overwrite the published PNGs)
    a.out.mkdir(parents=True, exist_ok=True)
    for i in [] if a.every != 1 else range(0, len(defect), max(1, len(defect) // 4))[:4]:
        save_overlay(a.out / f"anomaly_maps_mt_{mt_images[i].stem}.png", load_image(mt_images[i]), maps[i],
                     masks[i], title=f"{mt_images[i].parent.name}/{mt_images[i].stem}")
    for i in [] if a.every != 1 else range(0, len(stems), len(stems) // 3)[:3]:
        save_overlay(a.out / f"anomaly_maps_neuseg_{stems[i]}.png", load_image(seg_images[i]), seg_maps[i],
                     seg_masks[i], title=f"NEU-Seg/{stems[i]}")
    path = a.out / ("anomaly_maps.json" if a.every == 1 else f"anomaly_maps_every{a.every}.json")
    atomic_write_json(path, res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
