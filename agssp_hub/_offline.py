"""Make ultralytics work without a network: settings dir, bundled font, no telemetry or auto-installs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["prepare_ultralytics"]


def prepare_ultralytics(config_dir: str | os.PathLike[str] | None = None) -> Path:
    """Set ultralytics' offline env vars (before it is imported) and give it a local Arial.ttf; return the dir."""
    default = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "agssp-hub" / "ultralytics"
    cfg = Path(os.environ.get("YOLO_CONFIG_DIR") or config_dir or default)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cfg))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    font = cfg / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        try:
            import matplotlib

            src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            font.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, font)
        except (ImportError, OSError):
            pass  # ultralytics then tries to download the font and falls back when offline
    return cfg
