"""YOLOv8-s (mmyolo CSPDarknet) conversion: golden mm state dict from a random ultralytics model, end to end."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("ultralytics")

from _mm_reference import randomize_  # noqa: E402

# ultralytics yolov8s layer -> mmyolo module (method-spec §6.3), written independently of the converter.
_MM_LAYER = {
    0: "backbone.stem", 1: "backbone.stage1.0", 2: "backbone.stage1.1", 3: "backbone.stage2.0",
    4: "backbone.stage2.1", 5: "backbone.stage3.0", 6: "backbone.stage3.1", 7: "backbone.stage4.0",
    8: "backbone.stage4.1", 9: "backbone.stage4.2", 12: "neck.top_down_layers.0", 15: "neck.top_down_layers.1",
    16: "neck.downsample_layers.0", 18: "neck.bottom_up_layers.0", 19: "neck.downsample_layers.1",
    21: "neck.bottom_up_layers.1",
}


def _mm_key(key: str) -> str | None:
    """ultralytics yolov8s key -> mmyolo key (None for the non-persistent DFL projection)."""
    layer, rest = re.match(r"model\.(\d+)\.(.+)", key).groups()
    layer = int(layer)
    if layer == 22:
        if rest.startswith("dfl."):
            return None
        return "bbox_head.head_module." + rest.replace("cv2.", "reg_preds.", 1).replace("cv3.", "cls_preds.", 1)
    sppf = layer == 9
    rest = re.sub(r"^m\.(\d+)\.cv([12])\.", r"blocks.\1.conv\2.", rest)
    rest = re.sub(r"^cv1\.", "conv1." if sppf else "main_conv.", rest)
    rest = re.sub(r"^cv2\.", "conv2." if sppf else "final_conv.", rest)
    return f"{_MM_LAYER[layer]}.{rest}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A random yolov8s (nc=1) and the mmengine-format checkpoint holding the same tensors."""
    from agssp_hub.convert.yolov8 import build_from_yaml, detector_yaml

    model = build_from_yaml(detector_yaml("cspdarknet_s", 1), "agssp_yolov8s").model
    dfl = model.model[22].dfl.conv.weight.clone()
    randomize_(model, seed=1)
    model.model[22].dfl.conv.weight.data.copy_(dfl)
    model.eval()
    mm = {_mm_key(k): v.clone() for k, v in model.state_dict().items() if _mm_key(k)}
    path = tmp_path_factory.mktemp("official") / "metal_ft_yolov8s_cos_frozen_epoch_10.pth"
    ema = {f"module.{k}": v + 1 for k, v in mm.items()} | {"steps": torch.tensor(10)}
    torch.save({"meta": {"epoch": 10, "mmengine_version": "0.9.0"}, "state_dict": mm, "ema_state_dict": ema,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}}, path)
    return model, path


def test_golden_key_table(reference: tuple[torch.nn.Module, Path]) -> None:
    """The fixture speaks mmyolo: the key names of method-spec §6.3 are all there."""
    from agssp_hub.convert import load_mm_checkpoint

    sd = load_mm_checkpoint(reference[1]).state_dict
    for key in ("backbone.stem.conv.weight", "backbone.stage1.1.blocks.0.conv1.conv.weight",
                "backbone.stage4.2.conv2.bn.running_var", "neck.top_down_layers.0.main_conv.conv.weight"):
        assert key in sd
    assert sd["bbox_head.head_module.cls_preds.2.2.bias"].shape == (1,)
    assert sd["bbox_head.head_module.reg_preds.0.2.weight"].shape[0] == 64


@pytest.mark.slow
def test_yolov8s_end_to_end(reference: tuple[torch.nn.Module, Path], hf_cache: Path, capsys: pytest.CaptureFixture) -> None:
    """convert -> HF cache -> load_detector / timm give the reference outputs (1e-4), EMA copy ignored."""
    import timm

    import agssp_hub
    from agssp_hub.convert.cli import main

    model, path = reference
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "agssp_yolov8s" in out and "sha256" in out
    assert re.search(r"backbone\s+(\d+)\s+\1\s", out) and re.search(r"head\s+(\d+)\s+\1\s", out)

    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)[0]
        det = agssp_hub.load_detector("agssp_yolov8s").model.float().eval()
        torch.testing.assert_close(det(x)[0], ref, atol=1e-4, rtol=1e-4)

        feats = timm.create_model("agssp_cspdarknet_s", pretrained=True, features_only=True).eval()(x)
        taps, y, outs = {4: None, 6: None, 9: None}, x, []
        for i, layer in enumerate(model.model[:10]):
            y = layer(y)
            if i in taps:
                outs.append(y)
    assert [f.shape[1] for f in feats] == [128, 256, 512]
    for got, want in zip(feats, outs):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_finetune_keeps_agssp_weights(reference: tuple[torch.nn.Module, Path], hf_cache: Path, tmp_path: Path) -> None:
    """YOLO(agssp .pt).train(nc=2) transfers all but the class convs and trains on from the converted tensors."""
    import numpy as np
    from PIL import Image
    from ultralytics.utils import LOGGER

    import agssp_hub
    from agssp_hub.convert import convert_file

    model, path = reference
    convert_file(path)
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (data / split / "images").mkdir(parents=True)
        (data / split / "labels").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / split / "images" / f"{i}.jpg")
            (data / split / "labels" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.3\n")
    (data / "data.yaml").write_text(f"path: {data}\ntrain: train/images\nval: val/images\nnames: ['a', 'b']\n")

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    try:
        yolo = agssp_hub.load_detector("agssp_yolov8s")
        yolo.train(data=str(data / "data.yaml"), imgsz=64, epochs=1, batch=4, workers=0, device="cpu", plots=False,
                   val=False, project=str(tmp_path / "runs"), name="ft", optimizer="SGD", lr0=0.001, warmup_epochs=0,
                   amp=False)
    finally:
        LOGGER.removeHandler(handler)
    transferred = [m for m in records if "Transferred" in m]
    n, total = map(int, re.search(r"Transferred (\d+)/(\d+)", transferred[-1]).groups())
    assert total - n == 6  # only model.22.cv3.{0,1,2}.2.{weight,bias} (nc 1 -> 2) are re-initialised

    trained = yolo.trainer.model.state_dict()
    src = model.state_dict()
    for key in [k for k in src if k.endswith("conv.weight") and int(k.split(".")[1]) < 10]:
        change = (trained[key].float() - src[key]).norm() / src[key].norm()
        assert change < 0.05, f"{key} moved {change:.3f} away from the converted AGSSP tensor"
