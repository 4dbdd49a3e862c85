"""The agssp-hub CLI: import, list, info, export, verify, push (up to the network call)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import timm
import torch

from agssp_hub.cli import main
from agssp_hub._weights import resolve_file, sha256_file


@pytest.fixture()
def csp_pth(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A CSPDarknet state dict saved as a plain .pth, wrapped like a training checkpoint."""
    torch.manual_seed(1)
    sd = timm.create_model("agssp_cspdarknet_s").state_dict()
    path = tmp_path / "csp.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    return path, sd


def test_import_then_pretrained(hf_cache: Path, csp_pth: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    path, sd = csp_pth
    assert main(["import", "agssp_cspdarknet_s", str(path)]) == 0
    assert "sha256" in capsys.readouterr().out
    model = timm.create_model("agssp_cspdarknet_s", pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["agssp_cspdarknet_s"]["status"] == "installed (local)"
    assert rows["agssp_resnet50"]["status"] == "missing"


def test_import_refuses_wrong_architecture(hf_cache: Path, csp_pth: tuple[Path, dict],
                                           capsys: pytest.CaptureFixture) -> None:
    path, _ = csp_pth
    assert main(["import", "agssp_resnet50", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not a agssp_resnet50 state dict" in err


def test_import_never_unpickles_code(hf_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    assert main(["import", "agssp_resnet50", str(bad)]) == 2
    assert not marker.exists()
    assert "weights_only=True" in capsys.readouterr().err


def test_verify_and_export(hf_cache: Path, csp_pth: tuple[Path, dict], tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    path, _ = csp_pth
    main(["import", "agssp_cspdarknet_s", str(path)])
    snapshot = resolve_file("agssp_cspdarknet_s").parent
    assert main(["verify", str(snapshot)]) == 0
    assert "OK" in capsys.readouterr().out
    out = tmp_path / "exp"
    assert main(["export", "agssp_cspdarknet_s", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert json.loads((out / "config.json").read_text())["architecture"] == "agssp_cspdarknet_s"
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert main(["verify", str(snapshot)]) == 2
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["verify", str(path), "--sha256", sha256_file(path)]) == 0


def test_info_prints_card(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "agssp_yolov8s"]) == 0
    out = capsys.readouterr().out
    assert "metal_ft_yolov8s_cos_frozen_epoch_10.pth" in out and "77.2" in out
    assert main(["info", "nope"]) == 2


def test_push_uploads_export(hf_cache: Path, csp_pth: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture) -> None:
    import huggingface_hub

    path, _ = csp_pth
    main(["import", "agssp_cspdarknet_s", str(path)])
    calls: dict = {}

    def create_repo(self, repo_id: str, **kw) -> None:
        calls["repo"] = repo_id

    def upload_folder(self, repo_id: str, folder_path: str, **kw) -> str:
        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        calls["ignore"] = kw.get("ignore_patterns")
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert main(["push", "agssp_cspdarknet_s", "me/agssp_cspdarknet_s"]) == 0
    assert calls["repo"] == "me/agssp_cspdarknet_s"
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls["files"])
    assert "commit" in capsys.readouterr().out
