"""AGDP (stage 2): mmyolo → ultralytics hyper-parameters, the symlinked dataset, a frozen-backbone training run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")

from recipes.agdp import AGDPConfig, prepare_dataset, train_agdp, ultralytics_args  # noqa: E402


def _toy(root: Path, n: int = 12, size: int = 64) -> tuple[list[Path], Path]:
    """n images with one bright square each and their YOLO label files (one image without boxes)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    paths = []
    for i in range(n):
        a = (rng.random((size, size, 3)) * 60 + 90).astype(np.uint8)
        x, y = rng.integers(4, size - 24, 2)
        a[y:y + 16, x:x + 16] = 255
        p = root / "img" / f"t{i}.jpg"
        Image.fromarray(a).save(p)
        line = "" if i == 0 else f"0 {(x + 8) / size:.4f} {(y + 8) / size:.4f} {16 / size:.4f} {16 / size:.4f}\n"
        (root / "lab" / f"t{i}.txt").write_text(line)
        paths.append(p)
    return paths, root / "lab"


@pytest.mark.parametrize(
    ("batch", "wd"), [(200, 0.0015625), (128, 0.001), (80, 0.000625), (32, 0.0005), (14, 0.000546875)]
)
def test_weight_decay_is_scaled_like_mmyolo(batch: int, wd: float) -> None:
    args = ultralytics_args(AGDPConfig(batch=batch, device="cpu"), n_train=10_000)
    assert args["weight_decay"] == pytest.approx(wd) and args["nbs"] == batch  # no gradient accumulation


def test_official_schedule_mapping() -> None:
    big = ultralytics_args(AGDPConfig(batch=200, device="cpu"), n_train=120_000)  # 600 iterations per epoch
    assert big["warmup_epochs"] == 3.0  # max(3 epochs, 1000 iterations)
    small = ultralytics_args(AGDPConfig(batch=80, device="cpu"), n_train=8_000)  # 100 iterations per epoch
    assert small["warmup_epochs"] == pytest.approx(10.0)
    assert (big["close_mosaic"], big["mosaic"], big["epochs"], big["optimizer"]) == (0, 1.0, 10, "SGD")
    assert big["momentum"] == 0.937 and big["lrf"] == 0.01 and big["amp"] is False  # no AMP on CPU
    assert ultralytics_args(AGDPConfig(extra={"hsv_v": 0.0}, device="cpu"), 100)["hsv_v"] == 0.0
    with pytest.raises(ValueError, match="unknown AGDP config keys"):
        AGDPConfig.from_dict({"lr": 0.1})


def test_dataset_is_symlinked_and_split_deterministically(tmp_path: Path) -> None:
    images, labels = _toy(tmp_path)
    data = prepare_dataset(images, labels, tmp_path / "run", val_fraction=0.25)
    root = data.parent
    train = sorted(p.name for p in (root / "train" / "images").iterdir())
    val = sorted(p.name for p in (root / "val" / "images").iterdir())
    assert len(val) == 3 and not set(train) & set(val) and len(train) + len(val) == len(images)
    assert all((root / s / "images" / n).is_symlink() for s, names in (("train", train), ("val", val)) for n in names)
    assert f"path: {root}" in data.read_text() and root.is_absolute()
    again = prepare_dataset(images, labels, tmp_path / "run2", val_fraction=0.25)
    assert sorted(p.name for p in (again.parent / "val" / "images").iterdir()) == val
    (labels / "t3.txt").unlink()
    with pytest.raises(FileNotFoundError, match="t3.txt"):
        prepare_dataset(images, labels, tmp_path / "run3")


@pytest.mark.slow
def test_agdp_trains_head_keeps_backbone_and_skips_when_done(tmp_path: Path) -> None:
    import timm

    from agssp_hub import yolo as ay

    images, labels = _toy(tmp_path)
    torch.manual_seed(0)
    sd = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    cfg = AGDPConfig(backbone="test_efficientnet", epochs=1, imgsz=64, batch=4, workers=0, plots=False,
                     warmup_epochs=0.5, val_fraction=0.25, device="cpu")
    summary = train_agdp(cfg, images, labels, sd, tmp_path / "agdp")
    det = tmp_path / "agdp" / "detector.pt"
    yolo = ay.load_yolo(det)
    assert yolo.model.names == {0: "anomaly"}
    got = ay.backbone_state_dict(yolo)
    assert got and all(torch.equal(got[k], sd[k]) for k in got)  # float32, BN statistics untouched
    init = ay.load_yolo(tmp_path / "agdp" / "init.pt")
    head_k = [k for k in init.model.state_dict() if k.startswith("model.15.")]
    assert any(not torch.equal(init.model.state_dict()[k].float(), yolo.model.state_dict()[k]) for k in head_k)
    assert summary["images_val"] == 3 and summary["epochs_run"] == 1
    mtime = det.stat().st_mtime_ns
    assert train_agdp(cfg, images, labels, sd, tmp_path / "agdp") == summary and det.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_agdp_resumes_an_interrupted_ultralytics_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    from agssp_hub import yolo as ay

    images, labels = _toy(tmp_path)
    sd = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    cfg = AGDPConfig(backbone="test_efficientnet", epochs=2, imgsz=64, batch=4, workers=0, plots=False,
                     warmup_epochs=0.5, val_fraction=0.25, device="cpu")
    real = ay.frozen_backbone_callback
    calls = {"n": 0}

    def crashing(layers: int | None = None):  # noqa: ANN202
        inner = real(layers)

        def cb(trainer):  # noqa: ANN001, ANN202
            calls["n"] += 1
            if calls["n"] == 4:  # second epoch (3 batches per epoch), after epoch 1's last.pt
                raise KeyboardInterrupt("simulated kill")
            inner(trainer)

        return cb

    monkeypatch.setattr(ay, "frozen_backbone_callback", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_agdp(cfg, images, labels, sd, tmp_path / "agdp")
    assert (tmp_path / "agdp" / "run" / "weights" / "last.pt").is_file()
    assert not (tmp_path / "agdp" / "detector.pt").exists()
    first = (tmp_path / "agdp" / "run" / "results.csv").read_text().splitlines()
    monkeypatch.setattr(ay, "frozen_backbone_callback", real)
    summary = train_agdp(cfg, images, labels, sd, tmp_path / "agdp")
    rows = (tmp_path / "agdp" / "run" / "results.csv").read_text().splitlines()
    assert len(first) == 2 and rows[:2] == first and len(rows) == 3  # epoch 1 kept verbatim (incl. its time)
    assert summary["epochs_run"] == 2
    got = ay.backbone_state_dict(ay.load_yolo(tmp_path / "agdp" / "detector.pt"))
    assert all(torch.equal(got[k], sd[k]) for k in got)
