"""agssp_hub.yolo: YOLOv8 yaml on timm backbones, build/save/load, weights kept through YOLO.train()."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ultralytics")

from agssp_hub import yolo as ay  # noqa: E402


def _toy_detection_set(root: Path, n: int = 8, size: int = 96) -> Path:
    """Write n grey images with one bright square each, YOLO labels and an absolute-path data.yaml."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        a = (rng.random((size, size, 3)) * 60 + 100).astype(np.uint8)
        x, y = rng.integers(10, size - 40, 2)
        a[y : y + 24, x : x + 24] = 250
        Image.fromarray(a).save(root / "images" / f"im{i}.jpg")
        (root / "labels" / f"im{i}.txt").write_text(
            f"0 {(x + 12) / size:.4f} {(y + 12) / size:.4f} {24 / size:.4f} {24 / size:.4f}\n"
        )
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images\nval: images\nnames:\n  0: anomaly\n")
    return data


def test_yaml_uses_backbone_channels_and_mmyolo_pafpn() -> None:
    cfg = ay.yolo_yaml("resnet50", nc=1)
    index_channels = [row[3][0] for row in cfg["backbone"] if row[2] == "Index"]
    assert index_channels == [512, 1024, 2048]
    c2f = [row[3][0] for row in cfg["head"] if row[2] == "C2f"]
    assert c2f == [1024, 512, 1024, 2048]  # top-down P4, P3, bottom-up P4, P5 at width 1.0
    assert all(row[1] == 1 for row in cfg["head"])  # deepen 0.33: one bottleneck per C2f
    assert cfg["head"][-1][0] == [9, 12, 15] and cfg["nc"] == 1
    lite = ay.yolo_yaml("tf_efficientnet_lite0", nc=3)
    assert [row[3][0] for row in lite["backbone"] if row[2] == "Index"] == [40, 112, 320]
    native = ay.yolo_yaml("cspdarknet_s", nc=1)
    assert native["scale"] == "s" and native["nc"] == 1 and native["backbone"][-1][2] == "SPPF"


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'no_such_net'"):
        ay.yolo_yaml("no_such_net", nc=1)


def test_any_timm_arch_keeps_its_batchnorm_eps() -> None:
    yolo = ay.build_yolo("resnet18", nc=2, names=["a", "b"])
    bns = [m for m in ay._detection_model(yolo).model[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-5 for m in bns)  # ultralytics would reset them to 1e-3
    assert yolo.model.names == {0: "a", 1: "b"}
    out = yolo.model.eval()(torch.zeros(1, 3, 64, 64))
    assert out[0].shape[1] == 4 + 2


def test_frozen_backbone_eval_only_touches_backbone() -> None:
    yolo = ay.build_yolo("resnet18", nc=1)
    model = yolo.model.train()
    ay.set_frozen_backbone_eval(yolo)
    assert ay.backbone_layers(yolo) == 4
    assert not any(m.training for m in model.model[0].modules())
    assert all(m.training for m in model.model[4:].modules())


def test_backbone_state_dict_roundtrip_and_shape_errors() -> None:
    import timm

    sd = timm.create_model("resnet18", num_classes=0).state_dict()
    yolo = ay.build_yolo("resnet18", nc=1, backbone_state_dict=sd)
    got = ay.backbone_state_dict(yolo)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in got)
    bad = dict(sd, **{"conv1.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(ValueError, match="conv1.weight"):
        ay.load_backbone_state_dict(yolo, bad)
    with pytest.raises(ValueError, match="lacks"):
        ay.load_backbone_state_dict(yolo, {k: v for k, v in sd.items() if not k.startswith("layer4")})


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "cspdarknet_s"])
def test_saved_pt_loads_and_trains_in_fresh_process_keeping_backbone(backbone: str, tmp_path: Path) -> None:
    import timm

    arch = ay.BACKBONES[backbone]["architecture"]
    torch.manual_seed(0)
    sd = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
          for k, v in timm.create_model(arch, num_classes=0).state_dict().items()}
    yolo = ay.build_yolo(backbone, nc=1, backbone_state_dict=sd, names=["anomaly"])
    pt = ay.save_yolo(yolo, tmp_path / "det.pt")
    torch.save(sd, tmp_path / "backbone.pth")
    data = _toy_detection_set(tmp_path / "data")
    script = textwrap.dedent(f"""
        import json, torch
        from ultralytics import YOLO
        y = YOLO({str(pt)!r})  # plain ultralytics: agssp_hub is imported by unpickling only
        import agssp_hub.yolo as ay
        ref = torch.load({str(tmp_path / "backbone.pth")!r}, weights_only=True)
        y.add_callback("on_train_batch_start", ay.frozen_backbone_callback())
        y.train(data={str(data)!r}, epochs=1, imgsz=64, batch=4, workers=0, device="cpu", plots=False, amp=False,
                freeze=ay.backbone_layers(y), project={str(tmp_path / "runs")!r}, name="t", val=False, verbose=False)
        got = ay.backbone_state_dict(y.trainer.model)
        print(json.dumps(dict(names=y.model.names, n=len(got),
              same=all(torch.equal(got[k], ref[k]) for k in got))))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["same"] and out["n"] > 0.9 * len(sd)  # pruned heads (e.g. Lite0 conv_head) are not in the detector
    assert out["names"] == {"0": "anomaly"}
