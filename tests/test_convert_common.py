"""Safe loading, model detection, wrong-architecture refusal, ResNet-50 conversion."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from _mm_reference import randomize_
from agssp_hub.convert import ConversionError, detect_model, load_mm_checkpoint
from agssp_hub.convert.cli import main


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_never_executes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A .pth whose meta would run a shell command is refused with a clear error; the command never runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"x": _Payload(marker)}, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ConversionError, match=r"refusing to load.*system"):
        load_mm_checkpoint(path)
    assert main([str(path)]) == 1
    assert "evil.pth" in capsys.readouterr().err
    assert not marker.exists()


def test_mmengine_bookkeeping_objects_become_placeholders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """meta/message_hub objects that weights_only refuses (mmengine classes, numpy arrays) do not block a load."""
    import numpy as np

    mod = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self) -> None:
            self.data = np.arange(3.0)

    HistoryBuffer.__module__ = mod.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    mod.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    path = tmp_path / "ckpt.pth"
    torch.save({"meta": {"epoch": 10, "seed": np.int64(2024)}, "message_hub": {"log": HistoryBuffer()},
                "state_dict": {"backbone.layer1.0.conv1.weight": torch.ones(2)}}, path)
    monkeypatch.delitem(sys.modules, mod.__name__)  # mmengine is not installed when loading
    ck = load_mm_checkpoint(path)
    assert torch.equal(ck.state_dict["backbone.layer1.0.conv1.weight"], torch.ones(2))
    assert "mmengine.logging.history_buffer.HistoryBuffer" in ck.placeholders
    assert ck.meta["epoch"] == 10 and len(ck.sha256) == 64


def test_bare_state_dict_and_garbage(tmp_path: Path) -> None:
    """A bare state dict loads; a non-checkpoint file gives an error naming it."""
    bare = tmp_path / "bare.pth"
    torch.save({"backbone.stem.conv.weight": torch.ones(1)}, bare)
    assert list(load_mm_checkpoint(bare).state_dict) == ["backbone.stem.conv.weight"]
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="junk.pth"):
        load_mm_checkpoint(junk)


def _resnet_mm(arch: str = "resnet50", head: bool = True) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    import torchvision

    ref = randomize_(getattr(torchvision.models, arch)(), seed=5).eval()
    mm = {f"backbone.{k}": v.clone() for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    if head:  # the AGBP 61-class source-dataset head
        mm |= {"head.fc.weight": torch.randn(61, ref.fc.in_features), "head.fc.bias": torch.zeros(61)}
    return ref, mm


def test_detection_by_keys() -> None:
    """Each family is recognised from its keys; detectors need their own head keys."""
    _, mm = _resnet_mm()
    assert detect_model(mm) == "agssp_resnet50"
    yolo = mm | {"neck.top_down_layers.0.main_conv.conv.weight": torch.ones(1),
                 "bbox_head.head_module.cls_preds.0.2.bias": torch.ones(1)}
    assert detect_model(yolo) == "agssp_yolov8s_resnet50"
    with pytest.raises(ConversionError, match="faster_rcnn.*resnet50"):
        detect_model(mm | {"rpn_head.rpn_conv.weight": torch.ones(1), "roi_head.bbox_head.fc_cls.weight": torch.ones(1)})


def test_wrong_architecture_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A ResNet-18 checkpoint, or a file that is not the requested model, fails with a clear message."""
    _, mm = _resnet_mm("resnet18")
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": mm}, path)
    assert main([str(path)]) == 1
    assert "is not ResNet-50" in capsys.readouterr().err
    _, mm = _resnet_mm()
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": mm}, path)
    assert main([str(path), "--name", "agssp_swin_base_w6", "--dry-run"]) == 1
    assert "holds a agssp_resnet50 backbone, not agssp_swin_base_w6" in capsys.readouterr().err


def test_resnet50_shape_mismatch_names_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A mis-shaped backbone tensor gives a non-zero exit naming the tensor."""
    _, mm = _resnet_mm()
    mm["backbone.layer2.0.conv2.weight"] = mm["backbone.layer2.0.conv2.weight"][:, :, :1, :1].clone()
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": mm}, path)
    assert main([str(path), "--dry-run"]) == 1
    assert "layer2.0.conv2.weight" in capsys.readouterr().err


@pytest.mark.slow
def test_resnet50_agbp_file(tmp_path: Path, hf_cache: Path, capsys: pytest.CaptureFixture) -> None:
    """AGBP ResNet-50 file: backbone 100 %, head dropped; timm features == torchvision reference to 1e-4."""
    import timm

    ref, mm = _resnet_mm()
    path = tmp_path / "metal_v3_distill_rs50_cos_multi_frozen_epoch_200.pth"
    torch.save({"meta": {"epoch": 200}, "state_dict": mm, "optimizer": {}}, path)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "agssp_resnet50" in out and "dropped 2" in out
    model = timm.create_model("agssp_resnet50", pretrained=True, features_only=True, out_indices=(2, 3, 4)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model(x)
        y = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        want = []
        for layer in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
            y = layer(y)
            want.append(y)
    for got, w in zip(feats, want[1:]):
        torch.testing.assert_close(got, w, atol=1e-4, rtol=1e-4)
