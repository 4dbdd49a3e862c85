"""Detectors as objects: converted ResNet/Swin YOLO variants, Faster R-CNN and DINO (backbone only)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import agssp_hub
from _mm_reference import MMFPN, MMSwin, randomize_


def test_missing_weights_name_the_convert_command(hf_cache: Path) -> None:
    """Without converted weights, load_detector says which file to convert."""
    with pytest.raises(agssp_hub.MissingWeightsError, match="agssp-hub convert metal_ft_yolov8s_cos_frozen_epoch_10.pth"):
        agssp_hub.load_detector("agssp_yolov8s")
    with pytest.raises(agssp_hub.AgsspHubError, match="backbone"):
        agssp_hub.load_detector("agssp_resnet50")


def _mm_yolo_neck_head(model: torch.nn.Module, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """mmyolo names for the PAFPN + head of an ultralytics model built from ``cfg`` (rows in yaml order)."""
    head_rows = [(i, r[2]) for i, r in enumerate(cfg["backbone"] + cfg["head"]) if i >= len(cfg["backbone"])]
    names = iter(["neck.top_down_layers.0", "neck.top_down_layers.1", "neck.bottom_up_layers.0", "neck.bottom_up_layers.1"])
    convs = iter(["neck.downsample_layers.0", "neck.downsample_layers.1"])
    prefix = {i: next(names) for i, kind in head_rows if kind == "C2f"}
    prefix |= {i: next(convs) for i, kind in head_rows if kind == "Conv"}
    detect = [i for i, kind in head_rows if kind == "Detect"][0]
    out = {}
    for key, value in model.state_dict().items():
        layer, rest = re.match(r"model\.(\d+)\.(.+)", key).groups()
        layer = int(layer)
        if layer in prefix:
            rest = re.sub(r"^m\.(\d+)\.cv([12])\.", r"blocks.\1.conv\2.", rest)
            rest = re.sub(r"^cv1\.", "main_conv.", re.sub(r"^cv2\.", "final_conv.", rest))
            out[f"{prefix[layer]}.{rest}"] = value.clone()
        elif layer == detect and not rest.startswith("dfl."):
            out["bbox_head.head_module." + rest.replace("cv2.", "reg_preds.", 1).replace("cv3.", "cls_preds.", 1)] = value.clone()
    return out


def _run_head(model: torch.nn.Module, start: int, feats: dict[int, torch.Tensor]) -> torch.Tensor:
    """Run ultralytics layers ``start``.. with the given outputs standing in for earlier layers."""
    y: list[Any] = [feats.get(i) for i in range(len(model.model))]
    x = y[start - 1]
    for m in list(model.model)[start:]:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y[m.i] = x
    return x[0]


def _reference_yolo(backbone_id: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    from agssp_hub.convert.yolov8 import build_from_yaml, detector_yaml

    cfg = detector_yaml(backbone_id, 1)
    model = build_from_yaml(cfg, f"ref_{backbone_id}").model
    detect = model.model[-1]
    dfl = detect.dfl.conv.weight.clone()
    randomize_(model, seed=11)
    detect.dfl.conv.weight.data.copy_(dfl)
    return model.eval(), cfg


@pytest.mark.slow
def test_yolo_resnet50_converted_end_to_end(tmp_path: Path, hf_cache: Path) -> None:
    """mmyolo ResNet-50 YOLO -> ultralytics: P3-P5 == torchvision reference, detections == reference head, 1e-4."""
    import torchvision

    from agssp_hub.convert import convert_file

    ref_model, cfg = _reference_yolo("resnet50")
    resnet = randomize_(torchvision.models.resnet50(), seed=12).eval()
    mm = {f"backbone.{k}": v.clone() for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    mm |= _mm_yolo_neck_head(ref_model, cfg)
    path = tmp_path / "metal_ft_rs50_cos_frozen_epoch_10.pth"
    torch.save({"meta": {}, "state_dict": mm}, path)
    result = convert_file(path)
    assert set(result.installed) == {"agssp_resnet50", "agssp_yolov8s_resnet50"}
    det = agssp_hub.load_detector("agssp_yolov8s_resnet50").model.float().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        feats = []
        for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
            y = layer(y)
            feats.append(y)
        p = det.model[0](x)
        for got, want in zip(p, feats[1:]):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        want = _run_head(ref_model, 4, {1: feats[1], 2: feats[2], 3: feats[3]})
        torch.testing.assert_close(det(x)[0], want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_yolo_swin_w6_converted_end_to_end(tmp_path: Path, hf_cache: Path) -> None:
    """mmdet Swin-B w6 YOLO (norm1-3 on P3-P5) -> ultralytics; features and outputs match at 192 px."""
    from ultralytics import YOLO

    from agssp_hub.convert import convert_file

    ref_model, cfg = _reference_yolo("swin_base_w6")
    swin = randomize_(MMSwin(window=6, out_indices=(1, 2, 3), mmdet=True), seed=13).eval()
    mm = {f"backbone.{k}": v.clone() for k, v in swin.state_dict().items()} | _mm_yolo_neck_head(ref_model, cfg)
    path = tmp_path / "metal_ft_swinb_l2_frozen_simmim_epoch_10.pth"
    torch.save({"state_dict": mm}, path)
    result = convert_file(path)
    assert result.name == "agssp_yolov8s_swin_base_w6"
    pt = result.installed["agssp_yolov8s_swin_base_w6"].parent / "model.pt"
    det = YOLO(str(pt)).model.float().eval()  # plain YOLO(path)
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        p3, p4, p5 = swin(x)
        y = [None] * 10
        out = x
        for m in list(det.model)[:10]:
            out = m(y[m.f] if m.f != -1 else out)
            y[m.i] = out
        for got, want in zip((y[4], y[8], y[9]), (p3, p4, p5)):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(det(x)[0], _run_head(ref_model, 10, {4: p3, 8: p4, 9: p5}), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_faster_rcnn_and_dino(tmp_path: Path, hf_cache: Path, capsys: pytest.CaptureFixture) -> None:
    """Faster R-CNN converts to a torchvision FasterRCNN (FPN features == mmdet reference); DINO gives its backbone."""
    from agssp_hub.convert.cli import main

    swin = randomize_(MMSwin(window=6, out_indices=(0, 1, 2, 3), mmdet=True), seed=21).eval()
    fpn = randomize_(MMFPN([128, 256, 512, 1024], 256), seed=22).eval()
    mm = {f"backbone.{k}": v.clone() for k, v in swin.state_dict().items()}
    mm |= {f"neck.{k}": v.clone() for k, v in fpn.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    heads = {"rpn_head.rpn_conv": (256, 256, 3, 3), "rpn_head.rpn_cls": (3, 256, 1, 1), "rpn_head.rpn_reg": (12, 256, 1, 1),
             "roi_head.bbox_head.shared_fcs.0": (1024, 256 * 49), "roi_head.bbox_head.shared_fcs.1": (1024, 1024),
             "roi_head.bbox_head.fc_cls": (2, 1024), "roi_head.bbox_head.fc_reg": (4, 1024)}
    for name, shape in heads.items():
        mm[f"{name}.weight"] = torch.randn(shape, generator=g) * 0.01
        mm[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    path = tmp_path / "metal_ft_swinb_l2_frozen_simmim_rcnn_epoch_10.pth"
    torch.save({"state_dict": mm}, path)
    assert main([str(path)]) == 0
    assert "agssp_faster_rcnn_swin_base_w6" in capsys.readouterr().out
    model = agssp_hub.load_detector("agssp_faster_rcnn_swin_base_w6")
    box = model.roi_heads.box_predictor
    assert torch.equal(box.cls_score.weight[0], mm["roi_head.bbox_head.fc_cls.weight"][1])  # background first
    assert torch.equal(box.bbox_pred.weight[4:], mm["roi_head.bbox_head.fc_reg.weight"])
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        for got, want in zip(model.backbone(x).values(), fpn(swin(x))):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        dets = model([torch.rand(3, 96, 128)])
    assert set(dets[0]) == {"boxes", "labels", "scores"}

    dino = {k: v for k, v in mm.items() if k.startswith("backbone.") and not k.startswith("backbone.norm0")}
    dino |= {"encoder.layers.0.self_attn.value_proj.weight": torch.zeros(256, 256), "level_embed": torch.zeros(4, 256)}
    dpath = tmp_path / "metal_ft_swinb_l2_frozen_simmim_dino_epoch_10.pth"
    torch.save({"state_dict": dino}, dpath)
    assert main([str(dpath)]) == 0
    out = capsys.readouterr().out
    assert "agssp_dino_swin_base_w6" in out and "backbone only" in out and "installed agssp_swin_base_w6" in out
    with pytest.raises(agssp_hub.AgsspHubError, match="only the backbone"):
        agssp_hub.load_detector("agssp_dino_swin_base_w6")
