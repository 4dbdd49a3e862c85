"""NEU-DET-mini benchmark: ``python benchmarks/neu_det_mini.py [agssp-hub benchmark arguments]``.

Defaults: the fixed protocol ``recipes/configs/finetune_neu_det_mini.yaml``, the cpu-mini pretraining artifacts
``out/cpu-mini/artifacts.json`` (from ``python recipes/reproduce.py --model agssp_efficientnet_lite0 --profile
cpu-mini --out out/cpu-mini``), work folder ``out/benchmark``, committed results in ``results/``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / ".yolo-config"))  # per-checkout ultralytics settings

from recipes.finetune import benchmark_main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    base = Path(".") if Path.cwd().resolve() == ROOT else ROOT  # short, portable paths in the recorded command
    defaults = {"--artifacts": base / "out" / "cpu-mini" / "artifacts.json", "--out": base / "out" / "benchmark",
                "--results": base / "results"}
    for flag, value in defaults.items():
        if flag not in argv and not (flag == "--artifacts" and not value.is_file()):
            argv += [flag, str(value)]
    raise SystemExit(benchmark_main(argv))
