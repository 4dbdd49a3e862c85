"""P1: loading cost of the hub vs stock timm on the same file, and the import overhead of agssp_hub.

Usage: python benchmarks/p1_load.py [--repeats 7] [--out results/p1_load.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


_IMPORT_CODE = (
    "import time; t0 = time.perf_counter(); import timm; t1 = time.perf_counter(); import agssp_hub; "
    "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
)


def _import_times(repeats: int) -> tuple[list[float], list[float]]:
    """Fresh interpreters: seconds for ``import timm``, then the extra seconds for ``import agssp_hub``."""
    timm_s, extra_s = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _IMPORT_CODE], check=True, capture_output=True, text=True)
        a, b = map(float, out.stdout.split())
        timm_s.append(a)
        extra_s.append(b)
    return timm_s, extra_s


def main() -> int:
    """Measure and write the JSON report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="results/p1_load.json")
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="p1-hf-cache-"))
    os.environ["HF_HUB_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import timm
    import torch

    import agssp_hub  # noqa: F401
    from agssp_hub._weights import install_state_dict

    torch.manual_seed(0)
    path = install_state_dict("agssp_resnet50", timm.create_model("resnet50", num_classes=0).state_dict(),
                              source={"kind": "benchmark"})
    hub, stock = [], []
    for _ in range(args.repeats):  # interleaved so drift hits both alike
        t0 = time.perf_counter()
        timm.create_model("agssp_resnet50", pretrained=True)
        hub.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        timm.create_model("resnet50", pretrained=True, num_classes=0,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=0))
        stock.append(time.perf_counter() - t0)
    imp_timm, imp_extra = _import_times(args.repeats)
    report = {
        "command": f"python benchmarks/p1_load.py --repeats {args.repeats}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, timm {timm.__version__}",
        "file_bytes": path.stat().st_size,
        "create_model_s": {"agssp_hub": statistics.median(hub), "stock_timm_file": statistics.median(stock)},
        "create_model_ratio": statistics.median(hub) / statistics.median(stock),
        "import_s": {"timm": statistics.median(imp_timm), "agssp_hub_after_timm": statistics.median(imp_extra)},
        "import_overhead_s": statistics.median(imp_extra),
        "raw": {"hub": hub, "stock": stock, "import_timm": imp_timm, "import_agssp_hub_after_timm": imp_extra},
        "goals": {"create_model_ratio": "<= 1.10", "import_overhead_s": "<= 0.3"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("create_model_s", "create_model_ratio", "import_s", "import_overhead_s")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
