"""AGBP (stage 1): loss/target maths, frozen stages, exact resume after a crash, DDP with two processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recipes import agbp
from recipes.agbp import AGBPConfig, AGBPModel, distill_loss, energy, resize_targets, train_agbp

ROOT = Path(__file__).resolve().parents[1]


def _peaked(b: int, c: int, h: int, w: int, y: int, x: int) -> torch.Tensor:
    """Features that are small everywhere except a strong response at (y, x)."""
    f = 0.01 * torch.ones(b, c, h, w)
    f[:, :, y, x] = 1.0
    return f


def test_energy_is_channel_sum_of_squares() -> None:
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # B=1, C=2, 1x2
    assert torch.equal(energy(f), torch.tensor([[[[10.0, 5.0]]]]))


def test_map_peaked_where_features_peak_gives_lower_loss() -> None:
    feats = [_peaked(2, 4, 4, 4, 1, 1)]
    amap_here = torch.zeros(2, 1, 16, 16)
    amap_here[:, :, 4:8, 4:8] = 1.0  # the region that becomes cell (1, 1) at 4x4
    amap_there = torch.zeros(2, 1, 16, 16)
    amap_there[:, :, 12:16, 12:16] = 1.0
    here, there = distill_loss(feats, amap_here), distill_loss(feats, amap_there)
    assert here < 0.1 < 1.9 < there <= 2.0 + 1e-6  # 2 − 2cos: ~0 when aligned, ~2 when orthogonal


def test_loss_sums_layers_scales_with_weight_and_ignores_map_scale() -> None:
    feats = [torch.rand(3, 5, 8, 8), torch.rand(3, 7, 4, 4)]
    amap = torch.rand(3, 1, 32, 32)
    targets = resize_targets(amap, [(8, 8), (4, 4)])
    per_layer = [(2 - 2 * F.cosine_similarity(energy(f).flatten(1), a.flatten(1), dim=1)).mean()
                 for f, a in zip(feats, targets)]
    total = distill_loss(feats, amap)
    assert torch.allclose(total, per_layer[0] + per_layer[1])
    assert torch.allclose(distill_loss(feats, amap, weight=2.0), 2 * total)
    assert torch.allclose(distill_loss(feats, 7.0 * amap), total, atol=1e-6)  # cosine: scale-free


def test_two_step_resize_is_the_official_chain() -> None:
    amap = torch.rand(1, 1, 15, 15)
    two = resize_targets(amap, [(14, 14), (7, 7)], "two_step")
    direct = resize_targets(amap, [(14, 14), (7, 7)], "direct")
    chained = F.interpolate(F.interpolate(amap, (14, 14), mode="bilinear"), (7, 7), mode="bilinear")
    assert torch.allclose(two[1], chained) and torch.allclose(two[0], direct[0])
    assert not torch.allclose(two[1], direct[1])
    with pytest.raises(ValueError, match="target_resize"):
        resize_targets(amap, [(7, 7)], "bicubic")


def test_frozen_stages_follow_the_stride_rule_and_stay_in_eval() -> None:
    model = AGBPModel(AGBPConfig(architecture="test_resnet", strides=[16, 32], freeze_until_stride=8), num_sources=3)
    frozen_prefixes = {n.split(".")[0] for n in model.frozen}
    assert frozen_prefixes == {"conv1", "bn1", "layer1", "layer2"}  # = official frozen_stages=2
    assert not any(p.requires_grad for n, p in model.body.named_parameters() if n in model.frozen)
    assert all(p.requires_grad for n, p in model.body.named_parameters() if n.startswith(("layer3", "layer4")))
    model.train()
    assert not model.body.layer2.training and not model.body.bn1.training and model.body.layer3.training
    with pytest.raises(ValueError, match="unknown AGBP config keys"):
        AGBPConfig.from_dict({"epochz": 3})


def _toy_items(root: Path, n: int = 8, size: int = 48) -> list[tuple[Path, Path, int]]:
    """n random grey images with a bright square and a 6x6 map marking it, two source labels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        img = (rng.random((size, size)) * 80 + 80).astype(np.uint8)
        y, x = rng.integers(0, size - 16, 2)
        img[y:y + 16, x:x + 16] = 250
        amap = np.zeros((size, size), np.float32)
        amap[y:y + 16, x:x + 16] = 1
        p, m = root / f"im{i}.png", root / f"im{i}.npy"
        Image.fromarray(img).save(p)
        np.save(m, amap.reshape(6, size // 6, 6, size // 6).mean((1, 3)).astype(np.float32))
        items.append((p, m, i % 2))
    return items


def _tiny_cfg(**kw: object) -> AGBPConfig:
    base = dict(architecture="test_resnet", image_size=32, resize_scale=48, epochs=2, batch_size=2, workers=0,
                ckpt_every=1, amp=False, optimizer=dict(opt="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4),
                schedule=dict(sched="cosine", warmup_epochs=0))
    base.update(kw)
    return AGBPConfig(**base)


@pytest.mark.slow
def test_training_changes_only_trainable_stages_and_writes_outputs(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    items = _toy_items(tmp_path)
    torch.manual_seed(_tiny_cfg().seed)
    ref = AGBPModel(_tiny_cfg(), num_sources=2).backbone_state_dict()  # same seed -> same random init
    summary = train_agbp(_tiny_cfg(epochs=1), items, tmp_path / "run", val_items=items[:2], progress=False)
    out = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert set(out) == set(ref)
    frozen = [k for k in ref if k.startswith(("conv1", "bn1", "layer1", "layer2"))]
    assert frozen and all(torch.equal(out[k], ref[k]) for k in frozen)  # weights and BN running stats
    assert any(not torch.equal(out[k], ref[k]) for k in ref if k.startswith("layer4"))
    assert summary["val_before"] and summary["val_after"]
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "energy.png").is_file()


@pytest.mark.slow
def test_resume_after_crash_matches_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    items = _toy_items(tmp_path)
    train_agbp(_tiny_cfg(), items, tmp_path / "full", progress=False)  # 2 epochs x 4 steps
    real = agbp.distill_loss
    calls = {"n": 0}

    def crashing(*a: object, **k: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 6:  # mid-epoch 2, after the checkpoint of step 5
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(agbp, "distill_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_agbp(_tiny_cfg(), items, tmp_path / "resumed", progress=False)
    state = torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1) and not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.setattr(agbp, "distill_loss", real)
    summary = train_agbp(_tiny_cfg(), items, tmp_path / "resumed", progress=False)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert [h["distill"] for h in summary["history"]] == pytest.approx([h["distill"] for h in full["history"]])


@pytest.mark.slow
def test_ddp_two_processes_with_torchrun(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    items = _toy_items(tmp_path / "imgs")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(dict(architecture="test_resnet", image_size=32, resize_scale=48, epochs=1, batch_size=2,
                                   workers=0, amp=False, cls_weight=0.1, schedule=dict(sched="cosine"))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           str(ROOT / "recipes" / "agbp.py"), "--images", str(items[0][0].parent), "--maps", str(items[0][1].parent),
           "--config", str(cfg), "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_per_epoch"] == 2  # 8 images / 2 ranks / batch 2
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
