"""Shared fixtures: an offline ultralytics/HF environment, a temporary HF cache, the shared data."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AGSSP_SHARED_DATA", ROOT.parent / "shared" / "data"))

# ultralytics and the HF hub read these at import: set them before any test imports them.
_yolo_dir = ROOT / ".yolo-config"
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", str(_yolo_dir))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _install_font() -> None:
    font = _yolo_dir / "Ultralytics" / "Arial.ttf"
    if font.exists():
        return
    import matplotlib

    src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    font.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, font)


_install_font()


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty Hugging Face cache with the hub forced offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the project; skips the test when they are absent."""
    if not (SHARED_DATA / "NEU-DET").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set AGSSP_SHARED_DATA)")
    return SHARED_DATA
