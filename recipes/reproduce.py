"""Reproduce a published AGSSP checkpoint end to end: data → anomaly maps + pseudo-boxes → AGBP → AGDP → export.

    python recipes/reproduce.py --model agssp_efficientnet_lite0 --profile cpu-mini --out out/cpu-mini

Profiles (recipes/configs/profiles.yaml): ``smoke`` (24 synthetic images, minutes), ``cpu-mini`` (the real run on
../shared/data, ≤ 35 min on 2 CPU cores), ``paper`` (official hyper-parameters; refuses to start without a GPU).
Every stage records itself in ``OUT/state.json`` with its wall time and a hash of the settings it ran with; a re-run
skips finished stages and resumes inside unfinished ones (maps already written, AGBP ``last.pth``, ultralytics
``last.pt``). Changed settings for a finished stage are refused rather than silently mixed (``--restart-from``).
``OUT/artifacts.json`` lists the HF-layout backbone folder, the ultralytics detector, hashes, metrics, the merged
config, the git commit and the data manifest.
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "recipes"

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from agssp_hub import sha256_file  # noqa: E402

from .data import atomic_write_bytes, atomic_write_json, file_list_hash, list_images  # noqa: E402

__all__ = ["CONFIG_DIR", "PROFILES", "STAGES", "load_config", "Pipeline", "main"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROFILES = ("smoke", "cpu-mini", "paper")
STAGES = ("data", "anomaly", "agbp", "agdp", "export")
ROOT = Path(__file__).resolve().parents[1]


# -------------------------------------------------------------------------------------------------------- config
def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins, nested mappings merge key by key."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        nested = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = deep_merge(out[k], v) if nested else copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, with errors naming the file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def available_models() -> list[str]:
    """Model configs shipped in recipes/configs (one per published checkpoint)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("agssp_*.yaml"))


def load_config(model: str | Path, profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Model config ← profiles.yaml[profile] ← the model's own ``profiles[profile]`` ← ``overrides``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    path = Path(model) if str(model).endswith((".yaml", ".yml")) else CONFIG_DIR / f"{model}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recipe config; available models: {', '.join(available_models())}")
    cfg = _read_yaml(path)
    own_profiles = cfg.pop("profiles", {}) or {}
    shared = _read_yaml(CONFIG_DIR / "profiles.yaml").get(profile, {})
    cfg = deep_merge(cfg, shared)
    cfg = deep_merge(cfg, own_profiles.get(profile, {}) or {})
    cfg = deep_merge(cfg, overrides or {})
    cfg["profile"] = profile
    cfg["config_file"] = str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
    for key in ("name", "backbone", "architecture", "agbp", "agdp"):
        if key not in cfg:
            raise ValueError(f"{path}: missing required key {key!r}")
    return cfg


def _digest(obj: Any) -> str:
    """Short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(root: Path = ROOT) -> str | None:
    """HEAD commit of the checkout (with ``-dirty`` when tracked files changed), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------------------------- data
def _thumb(path: Path) -> Any:
    """16×16 grey thumbnail as a float vector (near-duplicate detection)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel()


def near_duplicates(candidates: Sequence[Path], reference: Sequence[Path], tol: float = 3.0) -> set[Path]:
    """Candidates whose 16×16 thumbnail is within ``tol`` grey levels (mean abs) of a reference image."""
    import numpy as np

    if not candidates or not reference:
        return set()
    ref = np.stack([_thumb(p) for p in reference])
    dup = set()
    for i in range(0, len(candidates), 512):
        chunk = candidates[i:i + 512]
        c = np.stack([_thumb(p) for p in chunk])
        d = np.abs(c[:, None, :] - ref[None]).mean(-1).min(1)
        dup.update(p for p, di in zip(chunk, d) if di < tol)
    return dup


def _list_source(root: Path, spec: Mapping[str, Any]) -> list[Path]:
    """Images of one source: a folder, optionally restricted to the stems of a list file."""
    images = list_images(root / spec["images"])
    if spec.get("list"):
        lst = root / spec["list"]
        if not lst.is_file():
            raise FileNotFoundError(f"{lst}: image list of source {spec.get('name', spec['images'])} not found")
        stems = {Path(line.split()[0]).stem for line in lst.read_text().splitlines() if line.strip()
                 and not line.startswith("#")}
        images = [p for p in images if p.stem in stems]
    return images


def shared_data_root() -> Path:
    """../shared/data beside the checkout, or $AGSSP_SHARED_DATA."""
    return Path(os.environ.get("AGSSP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def collect_images(cfg: Mapping[str, Any], out: Path, images: Sequence[Path] | None = None) -> dict[str, Any]:
    """The image list of a run (``[{path, source}]``) and its data manifest, from the profile's ``data`` section."""
    data = dict(cfg.get("data") or {})
    kind = "folders" if images else data.get("kind", "shared")
    rng = random.Random(data.get("seed", 2024))
    sources: list[tuple[str, list[Path]]] = []
    excluded: list[str] = []
    if kind == "synthetic":
        from .smoke_data import make_smoke_images

        n, size = int(data.get("n", 24)), int(data.get("size", 96))
        paths, _ = make_smoke_images(out / "data" / "synthetic", n=n, size=size)
        for src in sorted({p.parent.name for p in paths}):
            sources.append((src, [p for p in paths if p.parent.name == src]))
        root = out / "data" / "synthetic"
    elif kind == "folders":
        for folder in images or []:
            folder = Path(folder)
            sub = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
            found = list_images(folder)
            if len(sub) > 1 and all(not p.parent.samefile(folder) for p in found):
                for d in sub:  # one source label per sub-folder (AGBP's CE on the folder of origin)
                    imgs = list_images(d)
                    if imgs:
                        sources.append((f"{folder.name}/{d.name}", imgs))
            elif found:
                sources.append((folder.name, found))
        if not sources:
            raise FileNotFoundError(f"no images found under {', '.join(map(str, images or []))}")
        root = Path(images[0]) if images else Path(".")
    elif kind == "shared":
        root = shared_data_root()
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: shared data not found (set AGSSP_SHARED_DATA)")
        excl = data.get("exclude_near_duplicates_of")
        reference = _list_source(root, excl) if excl else []
        for spec in data.get("sources", []):
            imgs = _list_source(root, spec)
            if not imgs:
                raise FileNotFoundError(f"{root / spec['images']}: no images for source {spec.get('name')}")
            if reference and spec.get("list") != excl.get("list"):
                dup = near_duplicates(imgs, reference)
                excluded += [str(p.relative_to(root)) for p in sorted(dup)]
                imgs = [p for p in imgs if p not in dup]
            n = data.get("max_per_source")
            if n and len(imgs) > n:
                imgs = sorted(rng.sample(imgs, int(n)), key=str)
            sources.append((spec.get("name", spec["images"]), imgs))
    else:
        raise ValueError(f"unknown data kind {kind!r} (synthetic | shared | folders)")
    items = [{"path": str(p), "source": i} for i, (_, imgs) in enumerate(sources) for p in imgs]
    stems: dict[str, str] = {}
    for it in items:  # stage outputs are <stem>.npy/.txt: make stems unique across sources
        stem = Path(it["path"]).stem
        if stem in stems:
            raise ValueError(f"duplicate image stem {stem!r}: {stems[stem]} and {it['path']}")
        stems[stem] = it["path"]
    agdp_n = data.get("agdp_images")
    if agdp_n and agdp_n < len(items):
        agdp = sorted(rng.sample(range(len(items)), int(agdp_n)))
    else:
        agdp = list(range(len(items)))
    manifest = {
        "kind": kind,
        "root": str(root),
        "sources": [{"name": n, "images": len(imgs), "file_list_sha256": file_list_hash(imgs, None)}
                    for n, imgs in sources],
        "images": len(items),
        "file_list_sha256": file_list_hash([Path(it["path"]) for it in items], None),
        "agdp_images": len(agdp),
        "excluded_near_duplicates": {"count": len(excluded), "of": data.get("exclude_near_duplicates_of"),
                                     "files": excluded},
        "seed": data.get("seed", 2024),
    }
    return {"items": items, "agdp": agdp, "sources": [n for n, _ in sources], "manifest": manifest}


# -------------------------------------------------------------------------------------------------------- stages
class Pipeline:
    """One reproduction run in ``out``: stage bookkeeping in state.json, outputs in per-stage folders."""

    def __init__(self, cfg: dict[str, Any], out: str | Path, images: Sequence[Path] | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.cfg, self.out, self.images, self.progress, self.log = cfg, Path(out).resolve(), images, progress, log
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out / "state.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.state.setdefault("stages", {})

    # bookkeeping -------------------------------------------------------------------------------------------
    def _save_state(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def _stage_key(self, stage: str) -> str:
        """Hash of the settings a stage depends on (a finished stage with other settings is not reused)."""
        c = self.cfg
        deps = {"data": [c.get("data"), [str(p) for p in self.images or []]],
                "anomaly": [c.get("data"), c.get("anomaly"), c.get("boxes")],
                "agbp": [c.get("architecture"), c.get("model_args"), c.get("agbp")],
                "agdp": [c.get("backbone"), c.get("agdp")],
                "export": [c.get("name")]}[stage]
        prev = STAGES[: STAGES.index(stage)]
        return _digest([deps, [self.state["stages"].get(s, {}).get("key") for s in prev]])

    def run(self, stages: Sequence[str] = STAGES, restart_from: str | None = None) -> dict[str, Any]:
        """Run (or skip) each stage in order and return artifacts.json's content."""
        if restart_from:
            for s in STAGES[STAGES.index(restart_from):]:
                self.state["stages"].pop(s, None)
                shutil.rmtree(self.out / s, ignore_errors=True)
            self._save_state()
        self.state.update(model=self.cfg["name"], profile=self.cfg["profile"])
        for stage in stages:
            key = self._stage_key(stage)
            rec = self.state["stages"].get(stage, {})
            if rec.get("status") == "done":
                if rec.get("key") != key:
                    raise RuntimeError(
                        f"stage {stage!r} in {self.out} finished with other settings; use a new --out or "
                        f"--restart-from {stage}")
                self.log(f"[{stage}] done earlier ({rec.get('wall_s')} s), skipped")
                continue
            self.log(f"[{stage}] running")
            t0 = time.time()
            self.state["stages"][stage] = dict(rec, status="running", key=key)
            self._save_state()
            info = getattr(self, f"stage_{stage}")()
            wall = round(time.time() - t0, 1)
            self.state["stages"][stage] = dict(status="done", key=key, wall_s=wall, info=info,
                                               resumed=rec.get("status") == "running",
                                               finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            self._save_state()
            self.log(f"[{stage}] finished in {wall} s")
        return json.loads((self.out / "artifacts.json").read_text()) if (self.out / "artifacts.json").is_file() else {}

    # stage 0 ----------------------------------------------------------------------------------------------
    def _data(self) -> dict[str, Any]:
        return json.loads((self.out / "data" / "images.json").read_text())

    def stage_data(self) -> dict[str, Any]:
        """List the images (and synthesise the smoke set); write data/images.json + data/manifest.json."""
        data = collect_images(self.cfg, self.out, self.images)
        atomic_write_json(self.out / "data" / "images.json", data)
        atomic_write_json(self.out / "data" / "manifest.json", data["manifest"])
        self.log(f"[data] {data['manifest']['images']} images from {len(data['sources'])} sources "
                 f"({data['manifest']['excluded_near_duplicates']['count']} near-duplicates of held-out images "
                 "excluded)")
        return {"images": data["manifest"]["images"], "sources": data["sources"]}

    def stage_anomaly(self) -> dict[str, Any]:
        """Anomaly maps (``anomaly/maps/<stem>.npy``) and pseudo-boxes (``anomaly/boxes/<stem>.txt``)."""
        try:
            from .anomaly import generate_maps
        except ImportError:
            from .anomaly.cli import generate_maps
        from .boxes import maps_to_boxes

        a = dict(self.cfg.get("anomaly") or {})
        method = a.pop("method", "clipfree")
        device = "cuda" if _cuda() else "cpu"
        images = [Path(it["path"]) for it in self._data()["items"]]
        maps_dir, boxes_dir = self.out / "anomaly" / "maps", self.out / "anomaly" / "boxes"
        manifest = generate_maps(images, maps_dir, method=method, device=device, progress=self.progress,
                                 options=a.pop("options", None), **a)
        res = maps_to_boxes(maps_dir, images, boxes_dir, **dict(self.cfg.get("boxes") or {}))
        labels = boxes_dir / "labels"
        n_boxes = sum(len([ln for ln in (labels / f"{p.stem}.txt").read_text().splitlines() if ln.strip()])
                      for p in images if (labels / f"{p.stem}.txt").is_file())
        res = res if isinstance(res, Mapping) else {}
        return {"maps": str(maps_dir), "map_manifest": str(manifest), "labels": str(labels), "pseudo_boxes": n_boxes,
                "images_with_boxes": sum(1 for p in images if (labels / f"{p.stem}.txt").is_file()
                                         and (labels / f"{p.stem}.txt").stat().st_size > 0),
                "boxes": {k: v for k, v in res.items() if isinstance(v, (int, float, str))}}

    # stage 1 ----------------------------------------------------------------------------------------------
    def stage_agbp(self) -> dict[str, Any]:
        """AGBP on every image (a small seeded hold-out measures the energy/map cosine before and after)."""
        from .agbp import AGBPConfig, train_agbp

        d = deep_merge({"architecture": self.cfg["architecture"], "model_args": self.cfg.get("model_args") or {}},
                       self.cfg["agbp"])
        cfg = AGBPConfig.from_dict(d)
        items = [(Path(it["path"]), self.out / "anomaly" / "maps" / f"{Path(it['path']).stem}.npy", it["source"])
                 for it in self._data()["items"]]
        rng = random.Random(cfg.seed)
        n_val = min(max(8, len(items) // 20), 64, len(items) // 3)
        val_idx = set(rng.sample(range(len(items)), n_val))
        train = [it for i, it in enumerate(items) if i not in val_idx]
        val = [it for i, it in enumerate(items) if i in val_idx]
        summary = train_agbp(cfg, train, self.out / "agbp", val_items=val, progress=self.progress)
        return {k: summary.get(k) for k in ("images", "epochs", "wall_s", "val_before", "val_after", "init")}

    # stage 2 ----------------------------------------------------------------------------------------------
    def stage_agdp(self) -> dict[str, Any]:
        """AGDP with ultralytics on the AGBP backbone and the pseudo-boxes."""
        from safetensors.torch import load_file

        from .agdp import AGDPConfig, train_agdp

        d = dict(self.cfg["agdp"])
        d.setdefault("backbone", self.cfg["backbone"])
        cfg = AGDPConfig.from_dict(d)
        data = self._data()
        images = [Path(data["items"][i]["path"]) for i in data["agdp"]]
        sd = load_file(str(self.out / "agbp" / "model.safetensors"))
        summary = train_agdp(cfg, images, self.out / "anomaly" / "boxes" / "labels", sd, self.out / "agdp",
                             metadata={"model": self.cfg["name"], "profile": self.cfg["profile"]})
        return {k: summary.get(k) for k in ("images_train", "images_val", "metrics", "wall_s")}

    # export -----------------------------------------------------------------------------------------------
    def stage_export(self) -> dict[str, Any]:
        """HF-layout backbone folder with a model card, the detector files, artifacts.json."""
        from safetensors.torch import load_file

        import agssp_hub
        from agssp_hub import hf

        cfg, out = self.cfg, self.out
        name = cfg["name"]
        in_registry = name in {c.name for c in agssp_hub.list_checkpoints()}
        sd = load_file(str(out / "agbp" / "model.safetensors"))
        bdir = out / "backbone"
        image_size = int(cfg["agbp"].get("image_size", 224))
        from .agbp import AGBP_MEAN, AGBP_STD

        pcfg = {"mean": [m / 255 for m in AGBP_MEAN], "std": [s / 255 for s in AGBP_STD], "num_classes": 0}
        if not in_registry:  # registry entries keep their documented input size
            pcfg["input_size"] = [3, image_size, image_size]
        hf.save_backbone_dir(sd, bdir, name=name if in_registry else None, architecture=cfg["architecture"],
                             model_args=cfg.get("model_args") or {}, pretrained_cfg=pcfg)
        weights = bdir / "model.safetensors"
        b_sha, b_size = sha256_file(weights), weights.stat().st_size
        det_pt = self._export_detector() if (out / "agdp" / "detector.pt").is_file() else None
        metrics = self._metrics()
        card = self._card(name, b_sha, b_size, metrics, in_registry)
        atomic_write_bytes(bdir / "README.md", card.encode())
        art = self._artifacts(bdir, b_sha, b_size, det_pt, metrics)
        atomic_write_json(out / "artifacts.json", art)
        return {"backbone_sha256": b_sha, "backbone_size": b_size, "detector_sha256": art["detector_sha256"]}

    def _export_detector(self) -> Path:
        """The ultralytics .pt (loads with YOLO(path)) plus model.safetensors + model.yaml for hub hosting."""
        from safetensors.torch import save_file

        from agssp_hub import yolo as ay

        out, cfg = self.out, self.cfg
        ddir = out / "detector"
        ddir.mkdir(exist_ok=True)
        det_pt = ddir / "model.pt"
        shutil.copyfile(out / "agdp" / "detector.pt", ddir / ".model.pt.tmp")
        os.replace(ddir / ".model.pt.tmp", det_pt)
        det = ay.load_yolo(det_pt)
        det_sd = {k: (v.float() if v.is_floating_point() else v).detach().contiguous()
                  for k, v in ay._detection_model(det).state_dict().items()}
        save_file(det_sd, str(ddir / ".model.safetensors.tmp"), metadata={"format": "pt"})
        os.replace(ddir / ".model.safetensors.tmp", ddir / "model.safetensors")
        import yaml

        atomic_write_bytes(ddir / "model.yaml", yaml.safe_dump(
            {k: v for k, v in ay.yolo_yaml(cfg["backbone"], 1).items() if k != "yaml_file"}, sort_keys=False).encode())
        return det_pt

    def _metrics(self) -> dict[str, Any]:
        """Measured numbers of this run (AGBP hold-out cosine, AGDP pseudo-box mAP, wall times)."""
        agbp = json.loads((self.out / "agbp" / "summary.json").read_text())
        agdp_path = self.out / "agdp" / "summary.json"
        agdp = json.loads(agdp_path.read_text()) if agdp_path.is_file() else {}
        walls = {s: r.get("wall_s") for s, r in self.state["stages"].items() if r.get("status") == "done"}
        return {"agbp_val_before": agbp.get("val_before"), "agbp_val_after": agbp.get("val_after"),
                "agbp_final_train_distill": (agbp.get("history") or [{}])[-1].get("distill"),
                "agdp": agdp.get("metrics"), "wall_s": walls,
                "images": {"agbp": agbp.get("images"), "agdp_train": agdp.get("images_train"),
                           "agdp_val": agdp.get("images_val")}}

    def _card(self, name: str, sha: str, size: int, metrics: Mapping[str, Any], in_registry: bool) -> str:
        """Model card: the registry card (if any) plus this run's recipe, measured metrics and hashes."""
        head = ""
        if in_registry:
            from agssp_hub import get_checkpoint
            from agssp_hub.hf import model_card

            head = model_card(get_checkpoint(name), sha256=sha, size=size).rstrip() + "\n\n"
        else:
            head = ("---\nlicense: apache-2.0\nlibrary_name: timm\n"
                    "tags: [image-feature-extraction, agssp, timm]\n---\n"
                    f"# {name}\n\nAGSSP-pretrained `{self.cfg['architecture']}` backbone "
                    "(AGBP stage, arXiv:2509.18919) "
                    f"made with agssp-hub `recipes/reproduce.py`.\n\n")
        vb, va = metrics.get("agbp_val_before") or {}, metrics.get("agbp_val_after") or {}
        rows = "\n".join(f"| {k} | {vb.get(k, float('nan')):.4f} | {va.get(k, float('nan')):.4f} |"
                         for k in va)
        ag = metrics.get("agdp") or {}
        walls = ", ".join(f"{s} {w} s" for s, w in (metrics.get("wall_s") or {}).items())
        return head + f"""## Reproduction run ({self.cfg['profile']} profile)

- Recipe: `{self.cfg['config_file']}`, profile `{self.cfg['profile']}`; command
  `python recipes/reproduce.py --model {name} --profile {self.cfg['profile']} --out DIR`
- Weights: `model.safetensors`, sha256 `{sha}`, {size} bytes
- Images: {metrics['images']['agbp']} for AGBP, {metrics['images']['agdp_train']} (+{metrics['images']['agdp_val']}
  held out) for AGDP; anomaly maps: `{(self.cfg.get('anomaly') or {}).get('method')}`
- Wall time per stage: {walls}

AGBP hold-out (images not trained on): cosine between channel energy Σ_c F² and the anomaly map per supervised
stride (higher is better) and the distillation loss Σ(2 − 2cos) (lower is better):

| metric | before AGBP | after AGBP |
|---|---|---|
{rows}

AGDP (1-class detector on the pseudo-boxes, held-out images): mAP@0.5 {ag.get('pseudo_val_map50')},
mAP@0.5:0.95 {ag.get('pseudo_val_map50_95')} (pseudo-box agreement, not a defect-detection benchmark).
"""

    def _artifacts(
        self, bdir: Path, b_sha: str, b_size: int, det_pt: Path | None, metrics: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Content of artifacts.json."""
        import timm
        import torch

        try:
            import ultralytics

            ul = ultralytics.__version__
        except ImportError:  # pragma: no cover
            ul = None
        return {
            "model": self.cfg["name"],
            "detector_name": self.cfg.get("detector_name"),
            "profile": self.cfg["profile"],
            "backbone_dir": str(bdir),
            "backbone_weights": str(bdir / "model.safetensors"),
            "backbone_sha256": b_sha,
            "backbone_size": b_size,
            "detector": str(det_pt) if det_pt else None,
            "detector_sha256": sha256_file(det_pt) if det_pt else None,
            "detector_size": det_pt.stat().st_size if det_pt else None,
            "detector_files": {} if det_pt is None else {
                p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
                for p in sorted(det_pt.parent.iterdir()) if not p.name.startswith(".")},
            "architecture": self.cfg["architecture"],
            "model_args": self.cfg.get("model_args") or {},
            "metrics": metrics,
            "config": self.cfg,
            "git_commit": git_commit(),
            "data_manifest": json.loads((self.out / "data" / "manifest.json").read_text()),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                         "ultralytics": ul},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


def _cuda() -> bool:
    """True when a CUDA device is usable."""
    import torch

    return torch.cuda.is_available()


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``a.b=VALUE`` pairs (YAML values) into a nested override mapping."""
    import yaml

    out: dict[str, Any] = {}
    for kv in items:
        key, sep, val = kv.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(val)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python recipes/reproduce.py``)."""
    p = argparse.ArgumentParser(prog="reproduce", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help=f"recipe config name or YAML path ({', '.join(available_models())})")
    p.add_argument("--profile", required=True, choices=PROFILES)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--images", nargs="+", type=Path, help="use these image folders instead of the profile's data")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config, e.g. agbp.epochs=2")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="run only these stages")
    p.add_argument("--restart-from", choices=STAGES, help="discard this stage and the later ones, then run")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.model, args.profile, _parse_set(args.set))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.get("requires_gpu") and not _cuda():
        print(f"error: profile {args.profile!r} uses the official GPU-scale hyper-parameters (e.g. AGBP batch "
              f"{cfg['agbp'].get('batch_size')}, {cfg['agbp'].get('epochs')} epochs) and needs a CUDA GPU; none "
              f"was found. Use --profile cpu-mini (or smoke) on a CPU.", file=sys.stderr)
        return 2
    from agssp_hub._offline import prepare_ultralytics

    prepare_ultralytics()
    t0 = time.time()
    pipe = Pipeline(cfg, args.out, images=args.images, progress=not args.no_progress)
    art = pipe.run(args.stages, restart_from=args.restart_from)
    walls = {s: r.get("wall_s") for s, r in pipe.state["stages"].items()}
    print(json.dumps({"artifacts": str(pipe.out / "artifacts.json") if art else None, "wall_s": walls,
                      "backbone_sha256": art.get("backbone_sha256"), "this_run_s": round(time.time() - t0, 1)},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
