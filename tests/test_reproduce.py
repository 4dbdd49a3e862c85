"""recipes/reproduce.py + recipes/pretrain.py: configs and profiles, data selection, an end-to-end reduced smoke run."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recipes import reproduce
from recipes.agbp import AGBPConfig
from recipes.agdp import AGDPConfig
from recipes.reproduce import PROFILES, available_models, collect_images, load_config, near_duplicates

MODELS = ["agssp_resnet50", "agssp_swin_base_w7", "agssp_swin_base_w6", "agssp_cspdarknet_s",
          "agssp_efficientnet_lite0"]


def test_one_config_per_published_backbone() -> None:
    assert set(MODELS) <= set(available_models())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_config_and_profile_is_valid(model: str, profile: str) -> None:
    cfg = load_config(model, profile)
    agbp = AGBPConfig.from_dict({"architecture": cfg["architecture"], "model_args": cfg["model_args"], **cfg["agbp"]})
    agdp = AGDPConfig.from_dict({"backbone": cfg["backbone"], **cfg["agdp"]})
    assert agbp.epochs >= 1 and agdp.close_mosaic == 0 and agdp.mosaic == 1.0
    if profile == "paper":
        assert agbp.epochs == 200 and agdp.epochs == 10 and agdp.imgsz == 640 and cfg["requires_gpu"]


def test_profiles_merge_in_order() -> None:
    smoke = load_config("agssp_efficientnet_lite0", "smoke")
    mini = load_config("agssp_efficientnet_lite0", "cpu-mini")
    paper = load_config("agssp_efficientnet_lite0", "paper")
    assert smoke["agbp"]["epochs"] == 1 and smoke["agbp"]["init"] == "none" and smoke["data"]["kind"] == "synthetic"
    assert mini["agbp"]["init"] == "imagenet_lite0" and mini["agdp"]["lr0"] == 0.01 and mini["agdp"]["epochs"] == 10
    assert mini["agbp"]["strides"] == [16, 32] and mini["agbp"]["cls_weight"] == 0.1  # from the model config
    assert paper["agbp"]["batch_size"] == 1024 and paper["agdp"]["lr0"] == 0.0025
    over = load_config("agssp_resnet50", "smoke", reproduce._parse_set(["agbp.epochs=4", "agdp.imgsz=96"]))
    assert over["agbp"]["epochs"] == 4 and over["agdp"]["imgsz"] == 96 and over["agbp"]["image_size"] == 64
    with pytest.raises(FileNotFoundError, match="agssp_resnet50"):
        load_config("agssp_nope", "smoke")
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("agssp_resnet50", "huge")


def test_paper_profile_refuses_without_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(reproduce, "_cuda", lambda: False)
    rc = reproduce.main(["--model", "agssp_resnet50", "--profile", "paper", "--out", str(tmp_path / "o")])
    assert rc == 2 and "needs a CUDA GPU" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_near_duplicates_catch_reencoded_copies_only(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    a, b = (rng.random((2, 64, 64)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "ref.png")
    Image.fromarray(a).save(tmp_path / "copy.jpg", quality=90)
    Image.fromarray(b).save(tmp_path / "other.png")
    dup = near_duplicates([tmp_path / "copy.jpg", tmp_path / "other.png"], [tmp_path / "ref.png"])
    assert dup == {tmp_path / "copy.jpg"}


def test_folders_give_one_source_per_subfolder(tmp_path: Path) -> None:
    from PIL import Image

    for sub, n in (("steel", 3), ("tile", 2)):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8)).save(tmp_path / "imgs" / sub / f"{sub}{i}.png")
    data = collect_images({}, tmp_path / "out", images=[tmp_path / "imgs"])
    assert data["sources"] == ["imgs/steel", "imgs/tile"]
    assert sorted(it["source"] for it in data["items"]) == [0, 0, 0, 1, 1]
    assert len(data["manifest"]["file_list_sha256"]) == 64


SMOKE_SET = ["data.n=12", "data.size=64", "anomaly.options.short_side=64", "anomaly.options.bank_size=4",
             "agbp.image_size=32", "agbp.resize_scale=64", "agdp.imgsz=64", "agdp.batch=4"]


@pytest.mark.slow
def test_reduced_smoke_end_to_end_resumes_and_loads_everywhere(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import timm
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "smoke"
    args = ["--model", "agssp_efficientnet_lite0", "--profile", "smoke", "--out", str(out), "--no-progress",
            "--set", *SMOKE_SET]
    assert reproduce.main(args) == 0
    art = json.loads((out / "artifacts.json").read_text())
    bdir = Path(art["backbone_dir"])
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in bdir.iterdir()}
    assert art["backbone_sha256"] == reproduce.sha256_file(bdir / "model.safetensors")
    assert art["backbone_sha256"] in (bdir / "README.md").read_text()
    assert art["data_manifest"]["images"] == 12 and art["config"]["profile"] == "smoke"
    assert art["git_commit"] is not None
    state = json.loads((out / "state.json").read_text())
    assert [s for s, r in state["stages"].items() if r["status"] == "done"] == list(reproduce.STAGES)

    model = timm.create_model(f"local-dir:{bdir}", pretrained=True)
    ref = load_file(str(bdir / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())

    script = textwrap.dedent(f"""
        import json, torch
        from ultralytics import YOLO
        y = YOLO({art['detector']!r})
        r = y.predict(torch.zeros(1, 3, 64, 64), verbose=False)
        print(json.dumps(y.model.names))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"0": "anomaly"}

    capsys.readouterr()
    assert reproduce.main(args) == 0  # everything finished: every stage is skipped, nothing rewritten
    assert capsys.readouterr().out.count("skipped") == len(reproduce.STAGES)
    assert json.loads((out / "state.json").read_text())["stages"] == state["stages"]
    with pytest.raises(RuntimeError, match="other settings"):
        reproduce.main([*args, "agbp.epochs=2"])
