"""AGBP training-step overhead: an AGBP step vs a plain forward+backward of the same backbone and batch.

    python benchmarks/agbp_step.py --arch tf_efficientnet_lite0 --batch 16 --size 160

Both arms use the same model (frozen stages, feature taps, optimizer); the plain arm replaces the AGBP objective
(channel energy, two-step map resize, cosine loss and the source CE head) by the mean of the last feature map.
Arms are interleaved and the medians compared, so load from other processes hits both alike. Goal: ≤ 1.10×.
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from recipes.agbp import AGBPConfig, AGBPModel, distill_loss  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Time both arms and print a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="tf_efficientnet_lite0")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--steps", type=int, default=10, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", help="also append the JSON record to this file (a JSON list)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = AGBPConfig(architecture=args.arch, strides=[16, 32], cls_weight=0.1)
    model = AGBPModel(cfg, num_sources=3).to(dev).train()
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    amap = torch.rand(args.batch, 1, args.size, args.size, device=dev)
    labels = torch.randint(0, 3, (args.batch,), device=dev)

    def agbp_step() -> None:
        feats, logits = model(x)
        loss = distill_loss(feats, amap, 1.0, "two_step") + 0.1 * F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain_step() -> None:
        feats, _ = model(x)
        loss = feats[-1].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn: object) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for _ in range(args.warmup):
        agbp_step()
        plain_step()
    a, b = [], []
    for _ in range(args.steps):
        a.append(timed(agbp_step))
        b.append(timed(plain_step))
    ma, mb = statistics.median(a), statistics.median(b)
    record = {
        "arch": args.arch, "batch": args.batch, "size": args.size, "device": str(dev),
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "agbp_step_ms": round(1000 * ma, 1), "plain_step_ms": round(1000 * mb, 1), "ratio": round(ma / mb, 3),
        "goal": "<= 1.10", "steps": args.steps, "raw_agbp_s": a, "raw_plain_s": b,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/agbp_step.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps({k: v for k, v in record.items() if not k.startswith("raw")}, indent=2))
    if args.out:
        out = Path(args.out)
        records = json.loads(out.read_text()) if out.is_file() else []
        out.write_text(json.dumps(records + [record], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
