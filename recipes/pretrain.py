"""``agssp-hub pretrain --images DIR --arch ARCH --out DIR``: AGSSP on your own unlabelled images.

The same pipeline as recipes/reproduce.py (anomaly maps → pseudo-boxes → AGBP → AGDP → export) with the settings
of recipes/configs/pretrain.yaml, adapted to any timm architecture: the supervised stages are its last two feature
strides, everything up to stride 8 is frozen, and the detector is the YOLOv8 PAFPN/head on its stride-8/16/32 maps.
Sub-folders of DIR count as sources (the AGBP source-label loss); re-running the same command resumes.
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "recipes"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from .reproduce import CONFIG_DIR, STAGES, Pipeline, _cuda, _parse_set, deep_merge, load_config  # noqa: E402

__all__ = ["arch_settings", "main"]


def arch_settings(arch: str) -> dict[str, Any]:
    """Supervised strides, frozen stride and detector support of a timm architecture (built on the meta device)."""
    import timm
    import torch

    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r} (see timm.list_models())")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    info = getattr(model, "feature_info", None)
    info = info.info if hasattr(info, "info") else info
    if not info:
        raise ValueError(f"{arch}: timm model has no feature_info (features_only is not supported)")
    strides = sorted({int(f["reduction"]) for f in info})
    return {
        "strides": strides[-2:],
        "freeze_until_stride": 8 if 8 in strides and strides[-1] > 8 else None,
        "detector": all(s in strides for s in (8, 16, 32)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the pipeline, print a summary; returns the exit status."""
    p = argparse.ArgumentParser(prog="agssp-hub pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True, nargs="+", type=Path, help="folder(s) of unlabelled images")
    p.add_argument("--arch", required=True, help="timm architecture, e.g. resnet50, convnext_tiny")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--profile", default="cpu-mini", choices=("smoke", "cpu-mini", "paper"),
                   help="schedule scale from recipes/configs/profiles.yaml (default cpu-mini; paper needs a GPU)")
    p.add_argument("--init", help="backbone init: timm (default), none, imagenet_lite0, or a state-dict file")
    p.add_argument("--epochs", type=int, help="AGBP epochs")
    p.add_argument("--detector-epochs", type=int, help="AGDP epochs")
    p.add_argument("--image-size", type=int, help="AGBP crop size")
    p.add_argument("--batch-size", type=int, help="AGBP batch size")
    p.add_argument("--method", help="anomaly-map method (clipfree | kead)")
    p.add_argument("--no-detector", action="store_true", help="skip AGDP (backbone only)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any config value, e.g. agdp.imgsz=320")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        settings = arch_settings(args.arch)
        over: dict[str, Any] = {"name": f"agssp_{args.arch}", "backbone": args.arch, "architecture": args.arch,
                                "agbp": {"strides": settings["strides"],
                                         "freeze_until_stride": settings["freeze_until_stride"]}}
        flags = {("agbp", "init"): args.init, ("agbp", "epochs"): args.epochs, ("agdp", "epochs"): args.detector_epochs,
                 ("agbp", "image_size"): args.image_size, ("agbp", "batch_size"): args.batch_size,
                 ("anomaly", "method"): args.method}
        for (section, key), value in flags.items():
            if value is not None:
                over.setdefault(section, {})[key] = value
        if args.image_size:
            over["agbp"]["resize_scale"] = round(args.image_size * 512 / 224)
        cfg = load_config(CONFIG_DIR / "pretrain.yaml", args.profile, deep_merge(over, _parse_set(args.set)))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.get("requires_gpu") and not _cuda():
        print("error: --profile paper needs a CUDA GPU; use the default cpu-mini profile on a CPU", file=sys.stderr)
        return 2
    stages = list(STAGES)
    if args.no_detector or not settings["detector"]:
        if not args.no_detector:
            print(f"note: {args.arch} has no stride-8/16/32 feature maps, so no YOLO detector: backbone only")
        stages.remove("agdp")
    from agssp_hub._offline import prepare_ultralytics

    prepare_ultralytics()
    pipe = Pipeline(cfg, args.out, images=args.images, progress=not args.no_progress)
    art = pipe.run(stages)
    _print_summary(pipe, art)
    return 0


def _print_summary(pipe: Pipeline, art: dict[str, Any]) -> None:
    """Human-readable end-of-run summary: stages, outputs, and how to load them."""
    print("\nAGSSP pretraining finished")
    for stage, rec in pipe.state["stages"].items():
        print(f"  {stage:<8} {rec.get('status'):<6} {rec.get('wall_s', '')} s")
    m = art.get("metrics", {})
    va, vb = m.get("agbp_val_after") or {}, m.get("agbp_val_before") or {}
    if va:
        print("  AGBP hold-out energy/map cosine: " + ", ".join(
            f"{k} {vb.get(k, float('nan')):.3f} → {v:.3f}" for k, v in va.items() if k.startswith("cos")))
    if m.get("agdp"):
        print(f"  AGDP pseudo-box mAP@0.5 (held out): {m['agdp'].get('pseudo_val_map50')}")
    bdir = art.get("backbone_dir")
    print(f"\n  backbone  {bdir}  (sha256 {art.get('backbone_sha256')})")
    print(f"  detector  {art.get('detector')}")
    print(f"  artifacts {pipe.out / 'artifacts.json'}\n")
    print(f"  timm:          timm.create_model('local-dir:{bdir}', pretrained=True)")
    print(f"  transformers:  AutoModel.from_pretrained('{bdir}')   # stock timm architectures")
    if art.get("detector"):
        print(f"  ultralytics:   YOLO('{art['detector']}')")
    print(json.dumps({"artifacts": str(pipe.out / "artifacts.json")}))


if __name__ == "__main__":
    raise SystemExit(main())
