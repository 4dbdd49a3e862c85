"""The hub's front doors return exactly the installed tensors, verify sha256 and fail clearly."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import agssp_hub
from agssp_hub import HashMismatchError, MissingWeightsError, get_checkpoint, list_checkpoints
from agssp_hub._weights import MANIFEST, install_state_dict, resolve_file, sha256_file

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ["agssp_resnet50", "agssp_swin_base_w7", "agssp_swin_base_w6", "agssp_cspdarknet_s", "agssp_efficientnet_lite0"]
DETECTORS = ["agssp_yolov8s", "agssp_yolov8s_resnet50", "agssp_yolov8s_swin_base_w7", "agssp_yolov8s_swin_base_w6",
             "agssp_yolov8s_efficientnet_lite0", "agssp_faster_rcnn_swin_base_w6", "agssp_dino_swin_base_w6"]


def _seeded_backbone(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():  # make BN statistics non-trivial so a wrong load cannot pass
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture()
def installed_resnet(hf_cache: Path) -> torch.nn.Module:
    """A seeded ResNet-50 installed as agssp_resnet50 in the temporary cache."""
    model = _seeded_backbone("agssp_resnet50")
    install_state_dict("agssp_resnet50", model.state_dict(), source={"kind": "test"})
    return model


def test_registry_names_and_timm_registration() -> None:
    assert [c.name for c in list_checkpoints("backbone")] == BACKBONES
    assert [c.name for c in list_checkpoints("detector")] == DETECTORS
    for name in BACKBONES:
        assert name in timm.list_models("agssp_*")
        entry = get_checkpoint(name)
        assert entry.hf_hub_id and entry.source["kind"] in {"official", "recipe"}
    for name in DETECTORS:
        assert get_checkpoint(name).backbone in BACKBONES
    for entry in list_checkpoints():
        assert all(m.kind in {"reported", "measured"} and 0 <= m.value <= 100 for m in entry.metrics)
    with pytest.raises(KeyError, match="known:"):
        get_checkpoint("agssp_resnet5O")


def test_model_cards_are_current() -> None:
    from agssp_hub.hf import write_model_cards

    assert write_model_cards(ROOT / "model_cards", check=True) == [], "run `agssp-hub cards`"


def test_import_stays_light() -> None:
    code = (
        "import sys, agssp_hub, timm; "
        "print([m for m in ('ultralytics', 'transformers', 'open_clip', 'cv2') if m in sys.modules]); "
        "print('agssp_cspdarknet_s' in timm.list_models('agssp_*'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"


def test_pretrained_loads_exact_tensors(installed_resnet: torch.nn.Module) -> None:
    model = timm.create_model("agssp_resnet50", pretrained=True).eval()
    ref = installed_resnet.state_dict()
    assert model.state_dict().keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), installed_resnet(x))
    assert model.num_classes == 0 and model.pretrained_cfg["mean"] == get_checkpoint("agssp_resnet50").mean


def test_features_only_with_pretrained(installed_resnet: torch.nn.Module) -> None:
    feats = timm.create_model("agssp_resnet50", pretrained=True, features_only=True, out_indices=(2, 3, 4)).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        got = feats(x)
        ref = installed_resnet.forward_intermediates(x, indices=(2, 3, 4), intermediates_only=True)
    assert feats.feature_info.reduction() == [8, 16, 32]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_num_classes_and_in_chans(installed_resnet: torch.nn.Module) -> None:
    ref = installed_resnet.state_dict()
    clf = timm.create_model("agssp_resnet50", pretrained=True, num_classes=6)
    assert clf.fc.out_features == 6
    assert torch.equal(clf.layer4[2].conv3.weight, ref["layer4.2.conv3.weight"])
    gray = timm.create_model("agssp_resnet50", pretrained=True, in_chans=1)
    assert gray.conv1.weight.shape[1] == 1
    torch.testing.assert_close(gray.conv1.weight, ref["conv1.weight"].sum(1, keepdim=True))


def test_hash_mismatch_is_refused(installed_resnet: torch.nn.Module) -> None:
    path = resolve_file("agssp_resnet50")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HashMismatchError, match="sha256"):
        timm.create_model("agssp_resnet50", pretrained=True)


def test_unverifiable_file_is_refused(installed_resnet: torch.nn.Module) -> None:
    path = resolve_file("agssp_resnet50")
    (path.parent / MANIFEST).unlink()
    with pytest.raises(HashMismatchError, match="no sha256 is known"):
        timm.create_model("agssp_resnet50", pretrained=True)


def test_missing_weights_name_the_fix(hf_cache: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        timm.create_model("agssp_swin_base_w6", pretrained=True)
    msg = str(err.value)
    assert "agssp_swin_base_w6" in msg and "agssp-hub convert metal_ft_swinb_l2_frozen_simmim_epoch_10.pth" in msg
    assert "agssp-hub import agssp_swin_base_w6" in msg
    with pytest.raises(MissingWeightsError, match="reproduce.py --model agssp_efficientnet_lite0"):
        timm.create_model("agssp_efficientnet_lite0", pretrained=True)


def test_torch_hub_local(installed_resnet: torch.nn.Module) -> None:
    model = torch.hub.load(str(ROOT), "agssp_resnet50", source="local", pretrained=True, trust_repo=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), installed_resnet(x))
    import hubconf

    for name in BACKBONES + DETECTORS[:-1]:  # DINO is served as its backbone only
        fn = getattr(hubconf, name)
        assert fn.__doc__ and fn.__kwdefaults__ == {"pretrained": True}


def _run_clean(code: str, env_extra: dict[str, str]) -> str:
    """Run code in a fresh interpreter that must never import agssp_hub."""
    guard = "import sys\nassert 'agssp_hub' not in sys.modules\n"
    check = "\nassert 'agssp_hub' not in sys.modules, 'agssp_hub was imported'\n"
    env = {**os.environ, **env_extra, "PYTHONPATH": ""}
    res = subprocess.run([sys.executable, "-c", guard + code + check], capture_output=True, text=True, env=env,
                         cwd="/")
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_hf_layout_loads_without_agssp_hub(installed_resnet: torch.nn.Module, tmp_path: Path, hf_cache: Path) -> None:
    export_dir = tmp_path / "export"
    out = subprocess.run([sys.executable, "-m", "agssp_hub.cli", "export", "agssp_resnet50", str(export_dir)],
                         capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    config = json.loads((export_dir / "config.json").read_text())
    assert config["architecture"] == "resnet50" and "num_classes" not in config.get("model_args", {})
    card = (export_dir / "README.md").read_text()
    assert "model-index" in card and "(reported)" in card and "Citation" in card
    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(installed_resnet(x), tmp_path / "y.pt")
    code = f"""
import torch, timm
from transformers import AutoModel
x = torch.load({str(tmp_path / 'x.pt')!r}); y = torch.load({str(tmp_path / 'y.pt')!r})
for ref in ('local-dir:{export_dir}', 'hf-hub:agssp-hub/agssp_resnet50'):
    m = timm.create_model(ref, pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(m(x), y), ref
hf = AutoModel.from_pretrained({str(export_dir)!r}).eval()
with torch.no_grad():
    pooled = hf(pixel_values=x).pooler_output
torch.testing.assert_close(pooled, y)
print(type(hf).__name__)
"""
    stdout = _run_clean(code, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache)})
    assert "TimmWrapperModel" in stdout


@pytest.mark.slow
def test_swin_w6_export_keeps_window_override(hf_cache: Path, tmp_path: Path) -> None:
    model = _seeded_backbone("agssp_swin_base_w6")
    install_state_dict("agssp_swin_base_w6", model.state_dict(), source={"kind": "test"})
    loaded = timm.create_model("agssp_swin_base_w6", pretrained=True).eval()
    assert loaded.layers[0].blocks[0].attn.window_size == (6, 6)
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        y = model.forward_features(x)
        assert torch.equal(loaded.forward_features(x), y)
    torch.save((x, y), tmp_path / "xy.pt")
    snapshot = resolve_file("agssp_swin_base_w6").parent
    code = f"""
import torch, timm
x, y = torch.load({str(tmp_path / 'xy.pt')!r})
m = timm.create_model('local-dir:{snapshot}', pretrained=True).eval()
with torch.no_grad():
    assert torch.equal(m.forward_features(x), y)
print(m.layers[0].blocks[0].attn.window_size)
from transformers import AutoModel
hf = AutoModel.from_pretrained({str(snapshot)!r}).eval()
with torch.no_grad():
    torch.testing.assert_close(hf(pixel_values=x).last_hidden_state, y)
print(type(hf).__name__)
"""
    out = _run_clean(code, {"HF_HUB_OFFLINE": "1"})
    assert "(6, 6)" in out and "TimmWrapperModel" in out


def test_cspdarknet_matches_ultralytics_yolov8s_backbone() -> None:
    from agssp_hub._offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    from agssp_hub.models.cspdarknet import cspdarknet_to_ultralytics, ultralytics_to_cspdarknet

    torch.manual_seed(0)
    yolo = DetectionModel("yolov8s.yaml", nc=1, verbose=False).eval()
    ours = timm.create_model("agssp_cspdarknet_s", features_only=True, out_indices=(2, 3, 4)).eval()
    sd = ultralytics_to_cspdarknet(yolo.state_dict())
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 128, 128)
    taps, y = {}, x
    with torch.no_grad():
        for i, layer in enumerate(yolo.model[:10]):
            y = layer(y)
            taps[i] = y
        feats = ours(x)
    for got, idx in zip(feats, (4, 6, 9)):
        torch.testing.assert_close(got, taps[idx], rtol=0, atol=1e-5)
    back = cspdarknet_to_ultralytics(sd)
    assert all(torch.equal(back[k], yolo.state_dict()[k]) for k in back)
    assert len(back) == sum(1 for k in yolo.state_dict() if int(k.split(".")[1]) <= 9)
