"""Render a benchmark results JSON (``agssp-hub benchmark``) as the README "Results" section, a bar chart and metrics.

``python recipes/report.py results/neu_det_mini.json`` rewrites ``results/neu_det_mini.md`` and the bar chart PNG
from the JSON alone, so the numbers people read always come from the committed results file. The markdown ends with
``agssp_hub._registry.Metric`` lines for the model cards (``kind="measured"``).
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "recipes"

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["ARM_LABELS", "render_table", "render_markdown", "registry_metrics", "plot_bars", "main"]

ARM_LABELS = {
    "random": "random init",
    "imagenet": "ImageNet (backbone)",
    "agbp": "AGBP (backbone, stage 1)",
    "agssp": "AGSSP (detector, stages 1+2)",
}
_ORDER = ("random", "imagenet", "agbp", "agssp")


def _arms(report: Mapping[str, Any]) -> list[str]:
    """Arms of a report in the canonical order."""
    arms = report["arms"]
    return [a for a in _ORDER if a in arms] + [a for a in arms if a not in _ORDER]


def _pm(mean: float, std: float | None, n: int) -> str:
    """``mean ± std`` (std only with several seeds)."""
    return f"{mean:.1f} ± {std:.1f}" if n > 1 and std is not None else f"{mean:.1f}"


def render_table(report: Mapping[str, Any]) -> str:
    """The results as a markdown table: one row per arm, mean ± std over seeds, then each seed."""
    lines = ["| init | mAP@0.5 | mAP@0.5:0.95 | per seed (mAP@0.5 / mAP@0.5:0.95) | transferred |",
             "|---|---:|---:|---|---|"]
    for arm in _arms(report):
        r = report["arms"][arm]
        n = len(r["seeds"])
        seeds = ", ".join(f"s{s['seed']}: {s['map50']:.1f} / {s['map50_95']:.1f}" for s in r["seeds"])
        init = r.get("init", {})
        moved = (f"{init['transferred']}/{init['total']} tensors" if init.get("total")
                 else f"{init['transferred']} backbone tensors" if init.get("transferred") else "none")
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {_pm(r['map50'], r.get('map50_std'), n)} | "
                     f"{_pm(r['map50_95'], r.get('map50_95_std'), n)} | {seeds} | {moved} |")
    return "\n".join(lines)


def _deltas(report: Mapping[str, Any]) -> list[str]:
    """Differences of AGSSP and AGBP to the ImageNet arm, in points."""
    arms = report["arms"]
    out = []
    if "imagenet" in arms:
        for arm in ("agbp", "agssp"):
            if arm in arms:
                d50 = arms[arm]["map50"] - arms["imagenet"]["map50"]
                d95 = arms[arm]["map50_95"] - arms["imagenet"]["map50_95"]
                out.append(f"{ARM_LABELS[arm]} vs ImageNet: {d50:+.1f} mAP@0.5, {d95:+.1f} mAP@0.5:0.95")
    return out


def registry_metrics(report: Mapping[str, Any], dataset: str | None = None) -> list[str]:
    """``Metric(...)`` source lines (agssp_hub._registry) for the AGBP and AGSSP arms, measured values."""
    name = dataset or report["protocol"]["name"]
    train = report["protocol"]["train"]
    setup = (f"YOLOv8 head on EfficientNet-Lite0, {{init}} init, {train.get('epochs')} epochs at "
             f"{train.get('imgsz')} px, mean of {len(report['protocol']['seeds'])} seeds")
    source = f"results/{name}.json ({report.get('command', '')})"
    lines = []
    for arm in ("agbp", "agssp"):
        if arm in report["arms"]:
            r = report["arms"][arm]
            for metric in ("map50", "map50_95"):
                lines.append(f'Metric("{name}", "{metric}", {r[metric]:.1f}, "measured", '
                             f'"{setup.format(init=arm.upper())}", "{source}")')
    return lines


def render_markdown(report: Mapping[str, Any], name: str | None = None) -> str:
    """The README "Results" section: table, deltas, protocol summary, stage times, model-card metric lines."""
    name = name or report["protocol"]["name"]
    p = report["protocol"]
    t = p["train"]
    splits = p.get("dataset", {}).get("splits", {})
    data_line = ", ".join(f"{k} {v['images']} images / {v['boxes']} boxes" for k, v in splits.items())
    st = report.get("stage_times", {})
    lines = [
        f"## Results: {name}",
        "",
        f"Fine-tuning {p['detector']} on {p['data']} ({data_line}); mAP from ultralytics' validator on the fixed "
        "val split, in points. Same architecture, data, schedule and seeds for every row; only the initial weights "
        "differ.",
        "",
        render_table(report),
        "",
        *[f"- {d}" for d in _deltas(report)],
        "",
        f"Protocol (`{p.get('config', '')}`): {t.get('epochs')} epochs, imgsz {t.get('imgsz')}, batch {t.get('batch')}, "
        f"SGD lr0 {t.get('lr0')} (linear to ×{t.get('lrf')}), momentum {t.get('momentum')}, wd {t.get('weight_decay')}, "
        f"warmup {t.get('warmup_epochs')} epoch(s), mosaic closed for the last {t.get('close_mosaic')} epoch(s), "
        f"ultralytics default augmentations and losses, EMA, deterministic, seeds {p.get('seeds')}. "
        f"{p.get('evaluation', '')}.",
    ]
    if p.get("overrides"):
        lines.append(f"**Overrides (not the fixed protocol):** {p['overrides']}.")
    if st:
        lines += ["", f"Fine-tune wall time: {st.get('finetune_total_s', 0) / 60:.1f} min in total "
                  f"({', '.join(f'{a} {s / 60:.1f} min' for a, s in st.get('finetune_s_per_arm', {}).items())})"
                  + (f"; pretraining (cpu-mini stages, reused): {st['pretraining_total_s'] / 60:.1f} min "
                     f"({', '.join(f'{k} {v:.0f} s' for k, v in st['pretraining_s'].items() if v)})"
                     if "pretraining_total_s" in st else "") + "."]
    lines += ["", f"Machine: {report.get('machine', '')}. Date: {report.get('date', '')}.",
              f"Command: `{report.get('command', '')}`", ""]
    first = []
    for arm in _arms(report):
        losses = [s.get("first_epoch_train_loss") or {} for s in report["arms"][arm]["seeds"]]
        if losses and all(losses):
            mean = {k: sum(x[k] for x in losses) / len(losses) for k in losses[0]}
            first.append(f"{arm} {mean.get('box_loss', 0):.2f}/{mean.get('cls_loss', 0):.2f}/{mean.get('dfl_loss', 0):.2f}")
    if first:
        lines.append(f"- First-epoch train loss box/cls/dfl (mean over seeds): {', '.join(first)}.")
    diag = report.get("diagnostics", {}).get("agdp_detector_class_agnostic_before_finetune")
    if diag:
        lines.append(f"- The AGDP detector before fine-tuning (1 class, val classes merged): mAP@0.5 "
                     f"{diag['map50']:.1f}, mAP@0.5:0.95 {diag['map50_95']:.1f}.")
    pb = report.get("diagnostics", {}).get("pseudo_boxes_vs_labels")
    if pb:
        lines.append(f"- Stage-2 pseudo-boxes vs the real labels on the {pb['images']} pretraining images that are also "
                     f"labelled benchmark images: {pb['pseudo_boxes']} pseudo-boxes for {pb['gt_boxes']} labelled boxes "
                     f"({pb['images_with_pseudo_boxes']} images with any), recall@IoU0.5 "
                     f"{pb['gt_recall_iou0.5']:.3f}, precision@IoU0.5 {pb['pseudo_box_precision_iou0.5']:.3f}.")
    ov = report.get("diagnostics", {}).get("pretraining_corpus_vs_val")
    if ov:
        lines.append(f"- Pretraining corpus ({ov['corpus_images']} images) vs val: "
                     f"{ov['val_images_byte_identical_in_corpus']} val images byte-identical in the corpus.")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    metrics = registry_metrics(report, name)
    if metrics:
        lines += ["", "<details><summary>Model-card metrics (agssp_hub._registry)</summary>", "", "```python",
                  *metrics, "```", "", "</details>", ""]
    return "\n".join(lines)


def plot_bars(report: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bar chart of mAP@0.5 and mAP@0.5:0.95 per arm with seed spread and the individual seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = _arms(report)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    width = 0.38
    for j, (metric, colour) in enumerate((("map50", "#4c72b0"), ("map50_95", "#dd8452"))):
        xs = [i + (j - 0.5) * width for i in range(len(arms))]
        means = [report["arms"][a][metric] for a in arms]
        errs = [report["arms"][a].get(f"{metric}_std", 0.0) for a in arms]
        ax.bar(xs, means, width, yerr=errs, capsize=3, color=colour,
               label="mAP@0.5" if metric == "map50" else "mAP@0.5:0.95")
        for x, a in zip(xs, arms):
            pts = [s[metric] for s in report["arms"][a]["seeds"]]
            ax.scatter([x] * len(pts), pts, s=10, color="black", zorder=3)
        top = max([m + e for m, e in zip(means, errs)] + [1.0])
        for x, a, m, e in zip(xs, arms, means, errs):
            hi = max([m + e] + [s[metric] for s in report["arms"][a]["seeds"]])
            ax.text(x, hi + 0.02 * top, f"{m:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(arms)), [ARM_LABELS.get(a, a).split(" (")[0] for a in arms])
    ax.set_ylabel("points")
    ax.set_title(f"{report['protocol']['name']}: fine-tune from each initialisation", fontsize=10)
    ymax = max([s[m] for a in arms for s in report["arms"][a]["seeds"] for m in ("map50", "map50_95")] + [1.0])
    ax.set_ylim(0, ymax * 1.3)  # room for the value labels and the legend
    ax.legend(fontsize=8, frameon=False, ncol=2, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Re-render ``<name>.md`` and ``<name>.png`` next to a results JSON."""
    p = argparse.ArgumentParser(prog="agssp-hub report", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="results JSON written by agssp-hub benchmark")
    args = p.parse_args(argv)
    report = json.loads(args.results.read_text())
    name = args.results.stem
    args.results.with_suffix(".md").write_text(render_markdown(report, name))
    plot_bars(report, args.results.with_suffix(".png"))
    print(render_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
