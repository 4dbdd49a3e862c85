"""The ``agssp-hub`` command line: list, info, import, export, verify, push, convert, and the pipeline commands."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

__all__ = ["main"]

# Subcommands whose argument parsing lives with their code (imported only when called).
DELEGATED = {
    "convert": ("agssp_hub.convert.cli", "main", "convert an official AGSSP (mmyolo/mmdet) checkpoint and install it"),
    "anomaly-maps": ("agssp_hub.recipes.anomaly.cli", "main", "stage 0: anomaly maps for a folder of images (+ eval)"),
    "pretrain": ("agssp_hub.recipes.pretrain", "main", "AGSSP-pretrain a timm backbone on your unlabelled images"),
    "finetune": ("agssp_hub.recipes.finetune", "main", "fine-tune an AGSSP detector on a labelled dataset"),
    "benchmark": ("agssp_hub.recipes.finetune", "benchmark_main", "run the NEU-DET fine-tuning benchmark"),
}


def _cmd_list(args: argparse.Namespace) -> int:
    from ._registry import list_checkpoints
    from ._weights import local_status

    rows = [(c.name, c.family, c.source.get("kind", ""), c.architecture, local_status(c.name)) for c in
            list_checkpoints(args.family)]
    if args.json:
        print(json.dumps([dict(zip(("name", "family", "source", "architecture", "status"), r)) for r in rows], indent=2))
        return 0
    widths = [max(len(str(r[i])) for r in [("name", "family", "source", "architecture", "local")] + rows) for i in range(5)]
    for r in [("name", "family", "source", "architecture", "local")] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ._registry import get_checkpoint
    from .hf import model_card

    print(model_card(get_checkpoint(args.name)))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ._registry import get_checkpoint
    from ._weights import install_state_dict, load_pth_state_dict, sha256_file

    entry = get_checkpoint(args.name)
    if Path(args.file).is_dir():  # a folder of published files, e.g. a detector's model.safetensors + model.yaml
        return _import_dir(entry.name, Path(args.file))
    state_dict = load_pth_state_dict(args.file)
    _check_loadable(entry.name, state_dict, args.file)
    path = install_state_dict(
        entry.name, state_dict, source={"kind": "import", "file": str(Path(args.file).resolve()),
                                         "sha256": sha256_file(args.file)}
    )
    print(f"installed {entry.name}: {path}\nsha256 {sha256_file(path)}")
    return 0


def _import_dir(name: str, folder: Path) -> int:
    """Install every file of a folder (its safetensors checked for readability) as one snapshot."""
    from ._registry import get_checkpoint
    from ._weights import MANIFEST, AgsspHubError, install_files, load_pth_state_dict

    entry = get_checkpoint(name)
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    if entry.hf_hub_filename not in files:
        raise AgsspHubError(f"{folder}: no {entry.hf_hub_filename} in this folder (found {sorted(files)})")
    load_pth_state_dict(files[entry.hf_hub_filename])
    snapshot = install_files(name, files, source={"kind": "import", "folder": str(folder.resolve())})
    print(f"installed {name}: {snapshot} ({', '.join(files)})")
    return 0


def _check_loadable(name: str, state_dict: dict, file: str) -> None:
    """Refuse a state dict that does not load strictly into the registered backbone."""
    import timm

    from ._registry import get_checkpoint
    from ._weights import AgsspHubError

    if get_checkpoint(name).family != "backbone":
        return
    model = timm.create_model(name, pretrained=False)
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in state_dict.items() if not k.startswith(("fc.", "head.fc.", "classifier."))}, strict=False
    )
    missing = [k for k in missing if not k.startswith(("fc.", "head.fc.", "classifier."))]
    if missing or unexpected:
        raise AgsspHubError(
            f"{file}: not a {name} state dict: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )


def _cmd_export(args: argparse.Namespace) -> int:
    from .hf import export

    out = export(args.name, args.dir)
    print(f"exported {args.name} to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from ._weights import MANIFEST, HashMismatchError, sha256_file

    path = Path(args.path)
    targets = sorted(p for p in path.iterdir() if p.is_file() and p.name != MANIFEST) if path.is_dir() else [path]
    manifest_path = (path if path.is_dir() else path.parent) / MANIFEST
    manifest = json.loads(manifest_path.read_text())["files"] if manifest_path.is_file() else {}
    bad = 0
    for target in targets:
        digest = sha256_file(target)
        expected = manifest.get(target.name, {}).get("sha256") or args.sha256
        if expected and digest != expected:
            print(f"MISMATCH {target}: sha256 {digest}, expected {expected}")
            bad += 1
        else:
            print(f"{'OK' if expected else '--'} {digest}  {target}")
    if bad:
        raise HashMismatchError(f"{bad} file(s) under {path} do not match their sha256")
    return 0


def _cmd_cards(args: argparse.Namespace) -> int:
    from .hf import write_model_cards

    stale = write_model_cards(Path(args.out), check=args.check)
    if args.check and stale:
        print(f"stale model cards (run `agssp-hub cards`): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'} model cards in {args.out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hf import push

    print(push(args.name, args.repo_id, private=args.private))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (delegated subcommands take the rest of the line)."""
    parser = argparse.ArgumentParser(prog="agssp-hub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list registered checkpoints and whether they are installed")
    p.add_argument("--family", choices=("backbone", "detector"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="print a checkpoint's model card")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("import", help="install a weights file (safetensors or state-dict .pth) into the HF cache")
    p.add_argument("name")
    p.add_argument("file")
    p.set_defaults(func=_cmd_import)
    p = sub.add_parser("export", help="write a HF-layout folder (config.json, model.safetensors, README.md)")
    p.add_argument("name")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("verify", help="check the sha256 of a file or an installed folder")
    p.add_argument("path")
    p.add_argument("--sha256", help="expected hash for a single file without a manifest")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("push", help="export and upload a checkpoint to the Hugging Face Hub")
    p.add_argument("name")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_cmd_push)
    p = sub.add_parser("cards", help="regenerate model_cards/ from the registry (--check: fail when stale)")
    p.add_argument("--out", default="model_cards")
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=_cmd_cards)
    for name, (_, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from ._weights import AgsspHubError

    try:
        if argv and argv[0] in DELEGATED:
            module, func, _ = DELEGATED[argv[0]]
            return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (AgsspHubError, KeyError, FileNotFoundError) as err:
        print(f"agssp-hub: error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
