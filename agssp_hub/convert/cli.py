"""``agssp-hub convert FILE [--name NAME]``: convert an official AGSSP checkpoint and install it into the HF cache."""
from __future__ import annotations

import argparse
import sys

from .._registry import list_checkpoints

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    names = [c.name for c in list_checkpoints() if c.name != "agssp_efficientnet_lite0"]
    p = argparse.ArgumentParser(
        prog="agssp-hub convert",
        description="Convert an official AGSSP mmyolo/mmdet checkpoint (.pth, read with weights_only=True) into "
        "agssp-hub's timm backbones and ultralytics/torchvision detectors, installed into the HF cache with a "
        "sha256 manifest so pretrained=True, torch.hub and load_detector work offline.",
    )
    p.add_argument("file", help="official checkpoint, e.g. metal_ft_yolov8s_cos_frozen_epoch_10.pth")
    p.add_argument(
        "--name",
        choices=names,
        help="what to convert (default: detected from the keys); a backbone name converts only the backbone.* "
        "keys of any file holding them (e.g. AGBP-stage checkpoints)",
    )
    p.add_argument("--dry-run", action="store_true", help="convert and verify, but install nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the converter; 0 on success, 1 when the file cannot be converted completely."""
    args = _parser().parse_args(argv)
    from ._common import ConversionError, load_mm_checkpoint
    from ._pipeline import _install, convert_checkpoint

    try:
        ck = load_mm_checkpoint(args.file)
        print(f"source  {ck.path}")
        print(f"sha256  {ck.sha256}  ({ck.size} bytes)")
        if ck.placeholders:
            print(f"note    bookkeeping objects read as inert placeholders: {', '.join(ck.placeholders)}")
        result = convert_checkpoint(ck, args.name)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"model   {result.name} (backbone {result.backbone})")
    print(result.coverage.table())
    for note in result.notes:
        print(f"note    {note}")
    if args.dry_run:
        print("dry run: nothing installed")
        return 0
    _install(result)
    for name, path in result.installed.items():
        print(f"installed {name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
