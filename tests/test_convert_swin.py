"""Swin (mm layout) -> timm: small models through the converter's code path, plus one full Swin-B file."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from _mm_reference import MMFPN, MMSwin, randomize_

SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))


def _mm_state_dict(*modules: tuple[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.clone() for prefix, m in modules for k, v in m.state_dict().items()}


def _convert(mm: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict, dict]:
    from agssp_hub.convert._common import Coverage
    from agssp_hub.convert.swin import convert_swin

    cov = Coverage.of(mm)
    sd, norms = convert_swin(mm, model, cov)
    assert not [k for k in cov.unused("backbone") if not k.startswith("backbone.norm")]
    return sd, norms


@pytest.mark.parametrize("window,size", [(7, 224), (6, 192)])
def test_swin_forward_features(window: int, size: int) -> None:
    """Converted timm Swin == mm reference (mmpretrain semantics), every stage, to 1e-4."""
    ref = randomize_(MMSwin(32, (2, 2, 2, 2), (1, 2, 4, 8), window, (0, 1, 2, 3)), seed=window).eval()
    model = timm.create_model("swin_base_patch4_window7_224", num_classes=0, window_size=window, img_size=size, **SMALL)
    sd, norms = _convert(_mm_state_dict(("backbone", ref)), model)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(model.forward_features(x).permute(0, 3, 1, 2), want[3], atol=1e-4, rtol=1e-4)
        inter = model.forward_intermediates(x, indices=4, intermediates_only=True)
    for i in range(3):
        ln = torch.nn.functional.layer_norm(inter[i].permute(0, 2, 3, 1), (inter[i].shape[1],),
                                            norms[f"norm{i}.weight"], norms[f"norm{i}.bias"])
        torch.testing.assert_close(ln.permute(0, 3, 1, 2), want[i], atol=1e-4, rtol=1e-4)


def test_faster_rcnn_backbone_fpn_features() -> None:
    """mmdet Swin (always-shift) + FPN == SwinFPN (timm Swin, out-norms, torchvision FPN) after conversion."""
    from agssp_hub.convert._common import Coverage
    from agssp_hub.convert.faster_rcnn import convert_faster_rcnn
    from agssp_hub.detectors import SwinFPN

    swin = randomize_(MMSwin(32, (2, 2, 2, 2), (1, 2, 4, 8), 6, (0, 1, 2, 3), mmdet=True), seed=3).eval()
    fpn = randomize_(MMFPN([32, 64, 128, 256], 64), seed=4).eval()
    mm = _mm_state_dict(("backbone", swin), ("neck", fpn))
    target = SwinFPN("swin_base_patch4_window7_224", dict(window_size=6, img_size=192, **SMALL), fpn_channels=64)
    sd, _ = _convert(mm, target.body)
    cov = Coverage.of(mm)
    full = convert_faster_rcnn(mm, sd, cov)
    target.load_state_dict({k.removeprefix("backbone."): v for k, v in full.items()}, strict=True)
    target.eval()
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        want = fpn(swin(x))
        got = list(target(x).values())
    assert len(got) == 5
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_full_swin_base_w7_agbp_file(tmp_path: Path, hf_cache: Path) -> None:
    """A Swin-B w7 AGBP-stage file (norm3 + 61-class head): --name converts the backbone; 224 px output matches."""
    import agssp_hub
    from agssp_hub.convert.cli import main

    ref = randomize_(MMSwin(window=7, out_indices=(3,)), seed=7).eval()
    mm = _mm_state_dict(("backbone", ref)) | {"head.fc.weight": torch.randn(61, 1024), "head.fc.bias": torch.zeros(61)}
    assert mm["backbone.stages.2.blocks.17.attn.w_msa.relative_position_bias_table"].shape == (169, 16)
    path = tmp_path / "metal_v3_distill_swinb_multi_frozen_epoch_200.pth"
    torch.save({"meta": {}, "state_dict": mm}, path)
    assert main([str(path), "--name", "agssp_swin_base_w7"]) == 0
    model = timm.create_model("agssp_swin_base_w7", pretrained=True).eval()
    assert agssp_hub.get_checkpoint("agssp_swin_base_w7").model_args["window_size"] == 7
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x).permute(0, 3, 1, 2), ref(x)[0], atol=1e-4, rtol=1e-4)
