"""Stage 2, AGDP: a YOLOv8 neck + head trained on anomaly pseudo-boxes over the frozen AGBP backbone (method-spec §4).

ultralytics does the training. The backbone is frozen (``freeze=`` its layers) *and* kept in eval mode by an
``on_train_batch_start`` callback (ultralytics' ``freeze`` alone leaves drop-path and non-BN layers in train mode).
One class ``anomaly``; mosaic on for every epoch (``close_mosaic=0``) as in the official 10-epoch runs; SGD with
the mmyolo hyper-parameters of method-spec §4.3/§5.5 (weight decay pre-scaled, ``nbs=batch`` so nothing is
accumulated, warmup max(3 epochs, 1000 iterations)). The dataset is a run-local ``images/`` of symlinks next to a
``labels/`` copy of the stage-0 YOLO txt files; nothing is copied from the data folders.

A re-run resumes the ultralytics run from ``run/weights/last.pt``; a finished stage (``detector.pt`` +
``summary.json``) is skipped. ``detector.pt`` is written by :func:`agssp_hub.yolo.save_yolo` in float32 with the
exact AGBP backbone weights restored (ultralytics checkpoints are half precision).
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "recipes"

import argparse  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field, fields  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .data import atomic_write_bytes, atomic_write_json  # noqa: E402

__all__ = ["AGDPConfig", "prepare_dataset", "ultralytics_args", "train_agdp", "main"]


@dataclass
class AGDPConfig:
    """Stage-2 settings; mapped onto ultralytics train() arguments by :func:`ultralytics_args`."""

    backbone: str = "resnet50"  # agssp_hub.yolo backbone id or timm architecture
    epochs: int = 10
    imgsz: int = 640
    batch: int = 80
    lr0: float = 0.0025  # CSPDarknet official AGDP: 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float | None = None  # None: mmyolo 0.0005·bs·acc/64 with acc = max(round(64/bs), 1)
    warmup_epochs: float | None = None  # None: mmyolo max(3 epochs, 1000 iterations)
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    mosaic: float = 1.0
    close_mosaic: int = 0
    val_fraction: float = 0.1  # held-out pseudo-box images for the AGDP metric
    val_every_epoch: bool = False  # False: validate after the last epoch only
    workers: int = 2
    amp: bool = True
    seed: int = 2024
    device: str | None = None  # None: GPU 0 if present, else cpu
    plots: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # any other ultralytics train() argument

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AGDPConfig:
        """Build from a config mapping; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown AGDP config keys {unknown}; valid: {sorted(names)}")
        return cls(**dict(d))


def _split(stems: Sequence[str], val_fraction: float) -> set[str]:
    """Deterministic validation subset: stems whose hash falls in the first ``val_fraction`` (order-free)."""
    if val_fraction <= 0:
        return set()
    keyed = sorted(stems, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    n_val = max(1, round(len(keyed) * val_fraction)) if len(keyed) > 1 else 0
    return set(keyed[:n_val])


def prepare_dataset(images: Sequence[Path], labels_dir: Path, run_dir: Path, val_fraction: float = 0.1) -> Path:
    """Symlink images into ``run_dir/{train,val}/images``, copy ``<stem>.txt`` labels, write ``data.yaml``."""
    labels_dir = Path(labels_dir)
    stems = [Path(p).stem for p in images]
    if len(set(stems)) != len(stems):
        raise ValueError("AGDP needs unique image stems (labels are <stem>.txt)")
    val = _split(stems, val_fraction)
    root = Path(run_dir).resolve() / "dataset"
    missing = [labels_dir / f"{s}.txt" for s in stems if not (labels_dir / f"{s}.txt").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} pseudo-box label files missing, e.g. {missing[0]} (run stage 0)")
    for split in ("train", "val"):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
    for img, stem in zip(images, stems):
        split = "val" if stem in val else "train"
        link = root / split / "images" / Path(img).name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(Path(img).resolve())
        dst = root / split / "labels" / f"{stem}.txt"
        src = labels_dir / f"{stem}.txt"
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            atomic_write_bytes(dst, src.read_bytes())
    data = root / "data.yaml"
    val_dir = "val/images" if val else "train/images"
    text = f"path: {root}\ntrain: train/images\nval: {val_dir}\nnames:\n  0: anomaly\n"
    if not data.is_file() or data.read_text() != text:
        atomic_write_bytes(data, text.encode())
    return data


def ultralytics_args(cfg: AGDPConfig, n_train: int) -> dict[str, Any]:
    """ultralytics train() arguments reproducing the mmyolo AGDP recipe (method-spec §4.3, §5.5)."""
    nb = max(1, math.ceil(n_train / cfg.batch))
    acc = max(round(64 / cfg.batch), 1)
    wd = 0.0005 * cfg.batch * acc / 64 if cfg.weight_decay is None else cfg.weight_decay
    warm = max(3.0, 1000 / nb) if cfg.warmup_epochs is None else cfg.warmup_epochs
    device = cfg.device if cfg.device is not None else (0 if torch.cuda.is_available() else "cpu")
    args = dict(
        epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, nbs=cfg.batch, optimizer="SGD", lr0=cfg.lr0,
        lrf=cfg.lrf, momentum=cfg.momentum, weight_decay=wd, warmup_epochs=warm, warmup_bias_lr=cfg.warmup_bias_lr,
        warmup_momentum=cfg.warmup_momentum, mosaic=cfg.mosaic, close_mosaic=cfg.close_mosaic, cos_lr=False,
        box=7.5, cls=0.5, dfl=1.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, translate=0.1, scale=0.5, fliplr=0.5,
        degrees=0.0, shear=0.0, mixup=0.0, workers=cfg.workers, seed=cfg.seed, deterministic=True,
        amp=bool(cfg.amp and device != "cpu"), device=device, plots=cfg.plots, val=cfg.val_every_epoch,
        patience=100, save_period=-1, exist_ok=True, verbose=False,
    )
    args.update(cfg.extra)
    return args


def _finished(last: Path) -> bool:
    """True when an ultralytics last.pt marks a completed run (optimizer stripped, epoch -1)."""
    # This file was written by this run into its own output folder; ultralytics checkpoints pickle nn.Modules,
    # so they cannot be read with weights_only=True (user-supplied .pth inputs always are).
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    return ckpt.get("epoch", -1) == -1


def read_results_csv(csv_path: Path) -> list[dict[str, float]]:
    """Rows of ultralytics results.csv as floats (stripped column names)."""
    if not csv_path.is_file():
        return []
    with open(csv_path, newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def train_agdp(
    cfg: AGDPConfig,
    images: Sequence[Path],
    labels_dir: Path,
    backbone_state_dict: Mapping[str, Tensor],
    out_dir: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip when done) AGDP; writes ``out_dir/{detector.pt, summary.json}``."""
    from agssp_hub._offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    from agssp_hub import yolo as ay

    out = Path(out_dir).resolve()
    summary_path, detector = out / "summary.json", out / "detector.pt"
    if summary_path.is_file() and detector.is_file():
        return json.loads(summary_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = prepare_dataset(images, labels_dir, out, cfg.val_fraction)
    n_train = len(list((data.parent / "train" / "images").iterdir()))
    args = ultralytics_args(cfg, n_train)
    run = out / "run"
    last = run / "weights" / "last.pt"
    if last.is_file() and not _finished(last):
        model = YOLO(str(last))
        model.add_callback("on_train_batch_start", ay.frozen_backbone_callback())
        model.train(resume=True)
    elif not last.is_file():
        init = out / "init.pt"
        det = ay.build_yolo(cfg.backbone, 1, backbone_state_dict, names=["anomaly"])
        ay.save_yolo(det, init, metadata={"stage": "agdp-init"})
        model = YOLO(str(init))
        model.add_callback("on_train_batch_start", ay.frozen_backbone_callback())
        model.train(data=str(data), project=str(out), name="run", freeze=ay.backbone_layers(model), **args)
    best = run / "weights" / "best.pt"
    final = YOLO(str(best if best.is_file() else last))
    ay._detection_model(final).names = {0: "anomaly"}
    ay.load_backbone_state_dict(final, backbone_state_dict)  # exact fp32 AGBP weights (ultralytics saves fp16)
    rows = read_results_csv(run / "results.csv")
    scored = [r for r in rows if "metrics/mAP50(B)" in r]
    best_row = max(scored, key=lambda r: r["metrics/mAP50(B)"]) if scored else {}
    metrics = {
        "pseudo_val_map50": round(100 * best_row.get("metrics/mAP50(B)", float("nan")), 2),
        "pseudo_val_map50_95": round(100 * best_row.get("metrics/mAP50-95(B)", float("nan")), 2),
        "final_box_loss": rows[-1].get("train/box_loss") if rows else None,
    }
    ay.save_yolo(final, detector, metadata={**dict(metadata or {}), "stage": "agdp", "metrics": metrics,
                                             "config": asdict(cfg)})
    summary = dict(backbone=cfg.backbone, images_train=n_train,
                   images_val=len(list((data.parent / "val" / "images").iterdir())), args=args, metrics=metrics,
                   epochs_run=len(rows), wall_s=round(time.time() - t0, 1), detector=str(detector))
    if (run / "results.png").is_file():
        shutil.copyfile(run / "results.png", out / "results.png")
    atomic_write_json(summary_path, summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python recipes/agdp.py --images DIR --labels DIR --backbone ID --weights model.safetensors --out DIR``."""
    import yaml
    from safetensors.torch import load_file

    from .data import list_images

    p = argparse.ArgumentParser(prog="agdp", description=__doc__.split("\n")[0])
    p.add_argument("--images", nargs="+", required=True, type=Path)
    p.add_argument("--labels", required=True, type=Path, help="folder of <stem>.txt YOLO pseudo-boxes (stage 0)")
    p.add_argument("--weights", required=True, type=Path, help="AGBP backbone model.safetensors")
    p.add_argument("--config", type=Path, help="YAML with an 'agdp:' section")
    p.add_argument("--backbone", help="backbone id (overrides the config)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    d: dict[str, Any] = {}
    if args.config:
        raw = yaml.safe_load(args.config.read_text()) or {}
        d = dict(raw.get("agdp", raw))
        if "backbone" in raw:
            d.setdefault("backbone", raw["backbone"])
    if args.backbone:
        d["backbone"] = args.backbone
    for kv in args.set:
        k, _, v = kv.partition("=")
        d[k] = yaml.safe_load(v)
    cfg = AGDPConfig.from_dict(d)
    images = [img for root in args.images for img in list_images(root)]
    summary = train_agdp(cfg, images, args.labels, load_file(str(args.weights)), args.out)
    print(json.dumps(summary["metrics"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
