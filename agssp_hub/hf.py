"""Hugging Face layout: config.json (timm format), model.safetensors and a model card; export and push."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from ._registry import CITATION, UPSTREAM, Checkpoint, Metric, get_checkpoint, timm_cfg

__all__ = ["timm_config", "model_card", "write_model_cards", "save_backbone_dir", "export", "push"]

_CFG_KEYS = ("input_size", "interpolation", "crop_pct", "mean", "std", "num_classes", "first_conv", "classifier",
             "license", "paper_ids", "origin_url")


def timm_config(
    architecture: str,
    *,
    model_args: dict[str, Any] | None = None,
    pretrained_cfg: dict[str, Any] | None = None,
    num_features: int | None = None,
) -> dict[str, Any]:
    """A timm ``config.json`` that timm ``hf-hub:``/``local-dir:`` and transformers ``TimmWrapper`` both load."""
    pcfg = {k: v for k, v in (pretrained_cfg or {}).items() if k in _CFG_KEYS and v not in (None, "")}
    pcfg = {k: list(v) if isinstance(v, tuple) else v for k, v in pcfg.items()}
    num_classes = int(pcfg.get("num_classes", 0))
    args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (model_args or {}).items() if k != "num_classes"}
    config: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": num_classes,
        "global_pool": "avg",
        "pretrained_cfg": pcfg,
    }
    if num_features is not None:
        config["num_features"] = num_features
    if args:
        config["model_args"] = args  # never model_args.num_classes: transformers passes num_classes itself
    return config


def _eval_results(metrics: tuple[Metric, ...] | list[Metric], model_name: str) -> list[Any]:
    from huggingface_hub import EvalResult

    results = []
    for m in metrics:
        results.append(
            EvalResult(
                task_type="object-detection",
                dataset_type=m.dataset,
                dataset_name=f"{m.dataset} ({m.kind})",
                metric_type=m.metric,
                metric_name=f"{'mAP@0.5' if m.metric == 'map50' else 'mAP@0.5:0.95'} ({m.kind})",
                metric_value=m.value,
                source_name=m.source,
                source_url=UPSTREAM if m.kind == "reported" else "https://github.com/agssp-hub/agssp-hub",
            )
        )
    return results


def _metrics_table(metrics: tuple[Metric, ...] | list[Metric]) -> str:
    if not metrics:
        return "No evaluation recorded yet.\n"
    lines = ["| dataset | metric | value | kind | setup | source |", "|---|---|---|---|---|---|"]
    for m in sorted(metrics, key=lambda m: (m.kind, m.dataset, m.metric)):
        name = "mAP@0.5" if m.metric == "map50" else "mAP@0.5:0.95"
        lines.append(f"| {m.dataset} | {name} | {m.value:.1f} | {m.kind} | {m.setup} | {m.source} |")
    return "\n".join(lines) + "\n"


def model_card(entry: Checkpoint, *, sha256: str = "", size: int = 0) -> str:
    """The model card (README.md with model-index front matter) of a registry entry."""
    from huggingface_hub import ModelCard, ModelCardData

    base = entry.architecture if entry.family == "backbone" else None
    data = ModelCardData(
        license=entry.license,
        library_name="timm" if entry.family == "backbone" else None,
        pipeline_tag="image-feature-extraction" if entry.family == "backbone" else "object-detection",
        tags=["agssp", "anomaly-guided-pretraining", "surface-defect-detection", "metal", entry.family],
        model_name=entry.name,
        eval_results=_eval_results(entry.metrics, entry.name) or None,
    )
    reported = [m for m in entry.metrics if m.kind == "reported"]
    measured = [m for m in entry.metrics if m.kind == "measured"]
    sha = sha256 or entry.sha256 or "(recorded in agssp_manifest.json when installed)"
    src = entry.source
    if src.get("kind") == "official":
        provenance = (
            f"Converted from the official AGSSP release file `{src['file']}` ({src['url']}), an AGDP detector whose "
            f"frozen backbone comes from `{src.get('agbp_checkpoint', '')}` (AGDP config `{src.get('agdp_config', '')}`). "
            f"Reproduce the conversion: `{src['convert']}`."
        )
    else:
        provenance = f"Produced by the agssp-hub recipe `{src.get('config', '')}`: `{src.get('command', '')}`."
    usage = (
        f"```python\nimport agssp_hub, timm\nmodel = timm.create_model('{entry.name}', pretrained=True, features_only=True)\n"
        f"# or, without agssp_hub: timm.create_model('hf-hub:{entry.hf_hub_id}', pretrained=True)\n```\n"
        if entry.family == "backbone"
        else f"```python\nimport agssp_hub\nmodel = agssp_hub.load_detector('{entry.name}')\n```\n"
    )
    content = f"""---
{data.to_yaml()}
---

# {entry.name}

{entry.description}.

AGSSP (Anomaly-Guided Self-Supervised Pretraining, {entry.paper_ids}) distils anomaly maps into a backbone's
feature energy (AGBP), then pretrains a detector on pseudo-boxes cut from those maps (AGDP).

## Model details
- Family: {entry.family}; architecture: `{entry.architecture}`{f" with `{json.dumps(entry.model_args)}`" if entry.model_args else ""}
- Input size: {entry.input_size}; mean {tuple(round(x, 4) for x in entry.mean)}; std {tuple(round(x, 4) for x in entry.std)}
- Classes: {entry.num_classes or 'none (headless backbone)'}
- Weights: `{entry.hf_hub_filename}`, sha256 `{sha}`{f", {size or entry.size} bytes" if (size or entry.size) else ""}
- Provenance: {provenance}
{f"- Notes: {entry.notes}" if entry.notes else ""}

## Usage
{usage}
## Evaluation
Reported numbers come from the AGSSP paper/README; measured numbers were produced by agssp-hub (command in the
source column). They are kept apart.

### Reported
{_metrics_table(reported)}
### Measured
{_metrics_table(measured)}
## Intended use
Initialisation for fine-tuning surface-defect detectors (steel, casting billets, pipes, tiles) with few labels.

## Limitations
- Pretrained on industrial metal images; not a general-purpose feature extractor.
- Reported numbers are the authors' best validation epochs on their own splits; they are not comparable with
  numbers on other data.
- The weights carry no knowledge of defect classes beyond a single "anomaly" notion.

## License
Apache-2.0, as the official AGSSP code ({UPSTREAM}).

## Citation
```bibtex
{CITATION}
```
"""
    card = ModelCard(content)
    return str(card)


def write_model_cards(out_dir: Path, check: bool = False) -> list[str]:
    """Write ``<out_dir>/<name>.md`` for every registry entry; with ``check`` only list the stale ones."""
    from ._registry import list_checkpoints

    stale = []
    for entry in list_checkpoints():
        path = out_dir / f"{entry.name}.md"
        text = model_card(entry)
        if not path.is_file() or path.read_text() != text:
            stale.append(entry.name)
            if not check:
                out_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale


def save_backbone_dir(
    state_dict: dict[str, Tensor],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    architecture: str | None = None,
    model_args: dict[str, Any] | None = None,
    pretrained_cfg: dict[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Write config.json + model.safetensors + README.md; ``name`` fills the rest from the registry."""
    from safetensors.torch import save_file

    from ._weights import sha256_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entry = get_checkpoint(name) if name else None
    if entry is not None:
        architecture = architecture or entry.architecture
        model_args = entry.model_args if model_args is None else model_args
        pretrained_cfg = {**timm_cfg(entry.name), **(pretrained_cfg or {})}
    if not architecture:
        raise ValueError("save_backbone_dir needs a registry name or an architecture")
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    config = timm_config(architecture, model_args=model_args, pretrained_cfg=pretrained_cfg)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if card is None and entry is not None:
        card = model_card(entry, sha256=sha256_file(out / "model.safetensors"), size=(out / "model.safetensors").stat().st_size)
    if card is not None:
        (out / "README.md").write_text(card)
    return out


def export(name: str, out_dir: str | os.PathLike[str]) -> Path:
    """Write the verified cached weights of ``name`` as a HF repo folder (backbones) ready to push."""
    import shutil

    from ._weights import resolve_file

    entry = get_checkpoint(name)
    out = Path(out_dir)
    if entry.family == "backbone":
        from safetensors.torch import load_file

        return save_backbone_dir(load_file(resolve_file(name)), out, name=name)
    from ._weights import MANIFEST

    weights = resolve_file(name)
    out.mkdir(parents=True, exist_ok=True)
    manifest = weights.parent / MANIFEST
    filenames = json.loads(manifest.read_text())["files"] if manifest.is_file() else [entry.hf_hub_filename]
    for filename in filenames:
        shutil.copyfile(resolve_file(name, filename), out / filename)
    (out / "README.md").write_text(model_card(entry))
    return out


def push(name: str, repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Export ``name`` and upload it to the Hub as ``repo_id``; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory() as tmp:
        folder = export(name, Path(tmp) / name)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=f"Upload {name} from agssp-hub",
            ignore_patterns=["agssp_manifest.json"],
        )
    return str(getattr(info, "commit_url", info))
