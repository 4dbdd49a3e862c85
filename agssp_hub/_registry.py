"""Every AGSSP checkpoint as plain data: the one source for timm, torch.hub, HF cards and the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Checkpoint", "Metric", "REGISTRY", "get_checkpoint", "list_checkpoints", "timm_cfg", "PAPER_ID"]

PAPER_ID = "arXiv:2509.18919"
UPSTREAM = "https://github.com/clovermini/AGSSP"
CITATION = """@article{agssp2026,
  title   = {Anomaly-Guided Self-Supervised Pretraining for Metallic Surface Defect Detection},
  journal = {Pattern Recognition},
  year    = {2026},
  eprint  = {2509.18919},
  archivePrefix = {arXiv}
}"""

# AGBP normalisation (method-spec §3.3), 0-255 scale divided by 255 for timm.
AGBP_MEAN = (110.2955 / 255, 113.433 / 255, 109.914 / 255)
AGBP_STD = (32.028 / 255, 30.614 / 255, 30.27 / 255)
PIXEL_SCALE_ONLY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # YOLO detectors take RGB / 255


@dataclass(frozen=True)
class Metric:
    """One evaluation result: reported by the paper, or measured by us with a command."""

    dataset: str
    metric: str  # "map50" | "map50_95"
    value: float  # points, 0-100
    kind: str  # "reported" | "measured"
    setup: str  # what was fine-tuned and how
    source: str  # paper table, or results file + command


@dataclass(frozen=True)
class Checkpoint:
    """A published (or publishable) AGSSP checkpoint and its whole story."""

    name: str
    family: str  # "backbone" | "detector"
    architecture: str  # timm architecture, or detector kind ("ultralytics:yolov8", "torchvision:fasterrcnn", ...)
    description: str
    model_args: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = AGBP_MEAN
    std: tuple[float, float, float] = AGBP_STD
    num_classes: int = 0
    first_conv: str = ""
    classifier: str = ""
    license: str = "apache-2.0"
    paper_ids: str = PAPER_ID
    hf_hub_id: str = ""
    hf_hub_filename: str = "model.safetensors"
    sha256: str = ""  # full sha256 of the published file; empty until one is published
    size: int = 0  # bytes of the published file
    source: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = ()
    backbone: str | None = None  # detectors: the registry name of their backbone
    notes: str = ""


def _paper(setup: str, table: str, rows: dict[str, tuple[float, float]]) -> tuple[Metric, ...]:
    out: list[Metric] = []
    for dataset, (m50, m5095) in rows.items():
        out.append(Metric(dataset, "map50", m50, "reported", setup, table))
        out.append(Metric(dataset, "map50_95", m5095, "reported", setup, table))
    return tuple(out)


_FIG = "AGSSP README images/results.png (method-spec §7.2)"
_TAB = "AGSSP README table (method-spec §7.1)"


def _official(file: str, config: str, agbp: str) -> dict[str, Any]:
    return {
        "kind": "official",
        "file": file,
        "url": f"{UPSTREAM}#model-zoo",
        "hosts": "Google Drive / Baidu pan links in the upstream README (no published hashes)",
        "agdp_config": config,
        "agbp_checkpoint": agbp,
        "sha256": "",
        "convert": f"agssp-hub convert {file}",
    }


def _recipe(config: str) -> dict[str, Any]:
    return {"kind": "recipe", "config": config, "command": f"python recipes/reproduce.py --model {{name}} --profile cpu-mini --out out/cpu-mini"}


_CSP_METRICS = _paper(
    "YOLOv8-s fine-tuned from the AGSSP detector",
    _FIG,
    {"casting_billet_mini": (77.2, 44.9), "steel_pipe_mini": (76.4, 42.7), "gc10_mini": (58.9, 28.3), "gc10_det": (66.6, 32.3)},
)
_R50_METRICS = _paper(
    "YOLOv8 (ResNet-50, PAFPN widen 1.0) fine-tuned from the AGSSP detector",
    _FIG,
    {"casting_billet_mini": (74.5, 42.5), "steel_pipe_mini": (76.7, 42.3), "gc10_mini": (59.1, 28.3), "gc10_det": (65.3, 31.5)},
)
_SWIN7_METRICS = _paper(
    "YOLOv8 (Swin-B w7, cls-task AGBP) fine-tuned from the AGSSP detector",
    _FIG,
    {"casting_billet_mini": (77.7, 45.0), "steel_pipe_mini": (78.7, 44.0), "gc10_mini": (59.7, 28.1), "gc10_det": (63.5, 32.0)},
)
_SWIN6_METRICS = _paper(
    "YOLOv8 (Swin-B w6, SimMIM-task AGBP) fine-tuned from the AGSSP detector",
    _FIG,
    {"casting_billet_mini": (78.8, 48.4), "steel_pipe_mini": (79.0, 43.7), "gc10_mini": (58.8, 29.2), "gc10_det": (67.7, 34.0)},
)
_FRCNN_METRICS = _paper("Faster R-CNN Swin-B w6 fine-tuned from the AGSSP detector", _TAB, {"casting_billet_mini": (73.0, 41.0)})
_DINO_METRICS = _paper("DINO 4-scale Swin-B w6 fine-tuned from the AGSSP detector", _TAB, {"casting_billet_mini": (79.0, 50.4)})

_BENCH = "results/neu_det_mini.json (agssp-hub benchmark --artifacts out/cpu-mini/artifacts.json --out out/benchmark --results results)"
_BENCH_SETUP = ("YOLOv8 PAFPN/head on EfficientNet-Lite0 fine-tuned on NEU-DET-mini (300 images), 6 epochs at 224 px, "
                "mean of 2 seeds; ImageNet init scores 19.7 / 6.7 under the same protocol")
_LITE0_BACKBONE_METRICS = (
    Metric("neu_det_mini", "map50", 20.0, "measured", "backbone init (AGBP). " + _BENCH_SETUP, _BENCH),
    Metric("neu_det_mini", "map50_95", 6.8, "measured", "backbone init (AGBP). " + _BENCH_SETUP, _BENCH),
)
_LITE0_DETECTOR_METRICS = (
    Metric("neu_det_mini", "map50", 19.4, "measured", "detector init (AGBP + AGDP). " + _BENCH_SETUP, _BENCH),
    Metric("neu_det_mini", "map50_95", 7.1, "measured", "detector init (AGBP + AGDP). " + _BENCH_SETUP, _BENCH),
)

_ENTRIES: tuple[Checkpoint, ...] = (
    # ----------------------------------------------------------------------------------------------- backbones
    Checkpoint(
        name="agssp_resnet50",
        family="backbone",
        architecture="resnet50",
        description="ResNet-50 AGBP backbone (cosine distillation of KeAD maps into layer3/layer4 energy), "
        "taken from the official YOLOv8-ResNet50 AGSSP detector",
        first_conv="conv1",
        classifier="fc",
        hf_hub_id="agssp-hub/agssp_resnet50",
        source=_official(
            "metal_ft_rs50_cos_frozen_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_resnet50_1xb32-10e_pretrain_frozen.py",
            "metal_v3_distill_rs50_cos_multi_frozen_epoch_200.pth",
        ),
        metrics=_R50_METRICS,
    ),
    Checkpoint(
        name="agssp_swin_base_w7",
        family="backbone",
        architecture="swin_base_patch4_window7_224",
        description="Swin-B (window 7) AGBP backbone, classification-task distillation, taken from the official "
        "YOLOv8-SwinB (cls) AGSSP detector",
        model_args=dict(window_size=7),
        first_conv="patch_embed.proj",
        classifier="head.fc",
        hf_hub_id="agssp-hub/agssp_swin_base_w7",
        source=_official(
            "metal_ft_swinb_l2_frozen_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_swinb_1xb32-10e_pretrain_frozen_cls.py",
            "metal_v3_distill_swinb_multi_frozen_epoch_200.pth",
        ),
        metrics=_SWIN7_METRICS,
        notes="mmdet's neck-side LayerNorms norm1/norm2 (stage 2/3 outputs) have no timm equivalent and are kept "
        "in the detector only; norm3 becomes timm's final norm.",
    ),
    Checkpoint(
        name="agssp_swin_base_w6",
        family="backbone",
        architecture="swin_base_patch4_window7_224",
        description="Swin-B (window 6) AGBP backbone, SimMIM-task distillation, taken from the official "
        "YOLOv8-SwinB (SimMIM) AGSSP detector",
        model_args=dict(window_size=6, img_size=192),
        input_size=(3, 192, 192),
        first_conv="patch_embed.proj",
        classifier="head.fc",
        hf_hub_id="agssp-hub/agssp_swin_base_w6",
        source=_official(
            "metal_ft_swinb_l2_frozen_simmim_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_swinb_1xb32-10e_pretrain_frozen.py",
            "metal_simmim_distill_multi_frozen_epoch_200.pth",
        ),
        metrics=_SWIN6_METRICS,
        notes="The Faster R-CNN and DINO AGSSP detectors carry the same SimMIM-distilled AGBP backbone.",
    ),
    Checkpoint(
        name="agssp_cspdarknet_s",
        family="backbone",
        architecture="agssp_cspdarknet_s",
        description="YOLOv8-s CSPDarknet AGBP backbone, taken from the official YOLOv8-s AGSSP detector",
        first_conv="stem.conv",
        classifier="fc",
        hf_hub_id="agssp-hub/agssp_cspdarknet_s",
        source=_official(
            "metal_ft_yolov8s_cos_frozen_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_syncbn_fast_1xb32-10e_pretrain_frozen.py",
            "metal_v3_distill_yolov8s_cos_multi_frozen_epoch_200.pth",
        ),
        metrics=_CSP_METRICS,
        notes="No timm architecture exists for C2f/SPPF; `import agssp_hub` registers it.",
    ),
    Checkpoint(
        name="agssp_efficientnet_lite0",
        family="backbone",
        architecture="tf_efficientnet_lite0",
        description="EfficientNet-Lite0 AGBP backbone produced by our recipes (cpu-mini profile) from ImageNet "
        "weights, distilled on NEU-Seg + Magnetic-Tile + NEU-DET-train anomaly maps",
        first_conv="conv_stem",
        classifier="classifier",
        hf_hub_id="agssp-hub/agssp_efficientnet_lite0",
        sha256="a0f100e93134c18fac8eaaf4cc2c129152eda6e420a09740c05e5f828ca6874d",
        size=13678672,
        source=_recipe("recipes/configs/agssp_efficientnet_lite0.yaml"),
        metrics=_LITE0_BACKBONE_METRICS,
        notes="Not an official AGSSP release: a CPU-scale reproduction of the method by agssp-hub (cpu-mini profile: "
        "1500 unlabelled images, CLIP-free anomaly maps, AGBP 3 epochs at 160 px, AGDP 10 epochs at 256 px; "
        "2026-11-28, 2-core CPU, 39 min wall).",
    ),
    # ----------------------------------------------------------------------------------------------- detectors
    Checkpoint(
        name="agssp_yolov8s",
        family="detector",
        architecture="ultralytics:yolov8s",
        description="Official AGSSP YOLOv8-s (CSPDarknet) AGDP detector, 1 class 'anomaly'",
        input_size=(3, 640, 640),
        mean=PIXEL_SCALE_ONLY[0],
        std=PIXEL_SCALE_ONLY[1],
        num_classes=1,
        hf_hub_id="agssp-hub/agssp_yolov8s",
        backbone="agssp_cspdarknet_s",
        source=_official(
            "metal_ft_yolov8s_cos_frozen_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_syncbn_fast_1xb32-10e_pretrain_frozen.py",
            "metal_v3_distill_yolov8s_cos_multi_frozen_epoch_200.pth",
        ),
        metrics=_CSP_METRICS,
        notes="Conversion coverage 100% (backbone, neck, head); the DFL conv is the fixed arange(16) projection.",
    ),
    Checkpoint(
        name="agssp_yolov8s_resnet50",
        family="detector",
        architecture="ultralytics:yolov8-resnet50",
        description="Official AGSSP YOLOv8 detector with a ResNet-50 backbone and mmyolo PAFPN (widen 1.0), 1 class",
        input_size=(3, 640, 640),
        mean=PIXEL_SCALE_ONLY[0],
        std=PIXEL_SCALE_ONLY[1],
        num_classes=1,
        hf_hub_id="agssp-hub/agssp_yolov8s_resnet50",
        backbone="agssp_resnet50",
        source=_official(
            "metal_ft_rs50_cos_frozen_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_resnet50_1xb32-10e_pretrain_frozen.py",
            "metal_v3_distill_rs50_cos_multi_frozen_epoch_200.pth",
        ),
        metrics=_R50_METRICS,
        notes="Conversion coverage 100%: mmdet ResNet names are torchvision's without the `backbone.` prefix; PAFPN/head as an ultralytics yaml at widen 1.0.",
    ),
    Checkpoint(
        name="agssp_yolov8s_swin_base_w7",
        family="detector",
        architecture="ultralytics:yolov8-swin_base_w7",
        description="Official AGSSP YOLOv8 detector with a Swin-B (window 7, cls-task AGBP) backbone, 1 class",
        input_size=(3, 640, 640),
        mean=PIXEL_SCALE_ONLY[0],
        std=PIXEL_SCALE_ONLY[1],
        num_classes=1,
        hf_hub_id="agssp-hub/agssp_yolov8s_swin_base_w7",
        backbone="agssp_swin_base_w7",
        source=_official(
            "metal_ft_swinb_l2_frozen_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_swinb_1xb32-10e_pretrain_frozen_cls.py",
            "metal_v3_distill_swinb_multi_frozen_epoch_200.pth",
        ),
        metrics=_SWIN7_METRICS,
        notes="Conversion coverage 100%: norm3 becomes timm's final norm, mmdet's norm1/norm2 become LayerNorm rows of the detector yaml. mmdet pads before the window shift, timm after: features differ at sizes not divisible by the window.",
    ),
    Checkpoint(
        name="agssp_yolov8s_swin_base_w6",
        family="detector",
        architecture="ultralytics:yolov8-swin_base_w6",
        description="Official AGSSP YOLOv8 detector with a Swin-B (window 6, SimMIM-task AGBP) backbone, 1 class",
        input_size=(3, 640, 640),
        mean=PIXEL_SCALE_ONLY[0],
        std=PIXEL_SCALE_ONLY[1],
        num_classes=1,
        hf_hub_id="agssp-hub/agssp_yolov8s_swin_base_w6",
        backbone="agssp_swin_base_w6",
        source=_official(
            "metal_ft_swinb_l2_frozen_simmim_epoch_10.pth",
            "configs/pretrain_agdp/yolov8_s_swinb_1xb32-10e_pretrain_frozen.py",
            "metal_simmim_distill_multi_frozen_epoch_200.pth",
        ),
        metrics=_SWIN6_METRICS,
        notes="Conversion coverage 100%: as the w7 detector, with a timm window override of 6.",
    ),
    Checkpoint(
        name="agssp_yolov8s_efficientnet_lite0",
        family="detector",
        architecture="ultralytics:yolov8-tf_efficientnet_lite0",
        description="AGDP detector of our cpu-mini recipe: YOLOv8 PAFPN/head (widen 1.0) on the frozen "
        "agssp_efficientnet_lite0 backbone, trained on CLIP-free pseudo-boxes, 1 class 'anomaly'",
        input_size=(3, 256, 256),
        mean=PIXEL_SCALE_ONLY[0],
        std=PIXEL_SCALE_ONLY[1],
        num_classes=1,
        hf_hub_id="agssp-hub/agssp_yolov8s_efficientnet_lite0",
        sha256="3044061bab9066223b6ebbb434f10026ec0665756543b73ce8fb0af717778e33",
        size=18961556,
        backbone="agssp_efficientnet_lite0",
        source=_recipe("recipes/configs/agssp_efficientnet_lite0.yaml"),
        metrics=_LITE0_DETECTOR_METRICS,
        notes="Not an official AGSSP release. The published form is model.safetensors + model.yaml; "
        "load_detector materialises the ultralytics .pt.",
    ),
    Checkpoint(
        name="agssp_faster_rcnn_swin_base_w6",
        family="detector",
        architecture="torchvision:fasterrcnn-swin_base_w6",
        description="Official AGSSP Faster R-CNN (Swin-B w6 + FPN) AGDP detector, 1 class, as a torchvision FasterRCNN",
        input_size=(3, 640, 640),
        mean=(101.57 / 255,) * 3,
        std=(61.2 / 255,) * 3,
        num_classes=1,
        hf_hub_id="agssp-hub/agssp_faster_rcnn_swin_base_w6",
        backbone="agssp_swin_base_w6",
        source=_official(
            "metal_ft_swinb_l2_frozen_simmim_rcnn_epoch_10.pth",
            "configs/pretrain_agdp/faster-rcnn_swinb_fpn_1x_pretrain_frozen.py",
            "metal_simmim_distill_multi_frozen_epoch_200.pth",
        ),
        metrics=_FRCNN_METRICS,
        notes="Conversion coverage 100%: norm0-norm2 become the FPN input norms, the classifier rows are reordered to put background first. torchvision RoIAlign runs aligned=False where mmdet uses aligned=True, and rounds its base anchors: boxes differ slightly from mmdet.",
    ),
    Checkpoint(
        name="agssp_dino_swin_base_w6",
        family="detector",
        architecture="backbone-only",
        description="Official AGSSP DINO 4-scale (Swin-B w6) detector: only its backbone is served (as "
        "agssp_swin_base_w6); the DINO transformer stays in mmdet",
        input_size=(3, 640, 640),
        mean=(101.57 / 255,) * 3,
        std=(61.2 / 255,) * 3,
        num_classes=1,
        hf_hub_id="agssp-hub/agssp_swin_base_w6",
        backbone="agssp_swin_base_w6",
        source=_official(
            "metal_ft_swinb_l2_frozen_simmim_dino_epoch_10.pth",
            "configs/pretrain_agdp/dino-4scale_swinb_1xb32-10e_pretrain_frozen.py",
            "metal_simmim_distill_multi_frozen_epoch_200.pth",
        ),
        metrics=_DINO_METRICS,
        notes="Backbone only: converting this file installs agssp_swin_base_w6.",
    ),
)

REGISTRY: dict[str, Checkpoint] = {c.name: c for c in _ENTRIES}
for _c in _ENTRIES:
    if _c.source.get("kind") == "recipe":
        _c.source["command"] = _c.source["command"].format(name=_c.name if _c.family == "backbone" else _c.backbone)


def get_checkpoint(name: str) -> Checkpoint:
    """Return the registry entry ``name`` or raise a KeyError listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown AGSSP checkpoint {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def list_checkpoints(family: str | None = None) -> list[Checkpoint]:
    """All entries, optionally only one family."""
    return [c for c in _ENTRIES if family is None or c.family == family]


def timm_cfg(name: str) -> dict[str, Any]:
    """The timm pretrained cfg of a backbone entry (no weight source: weights resolve through agssp_hub)."""
    c = get_checkpoint(name)
    return dict(
        input_size=c.input_size,
        mean=c.mean,
        std=c.std,
        num_classes=c.num_classes,
        first_conv=c.first_conv,
        classifier=c.classifier,
        crop_pct=1.0,
        interpolation="bilinear",
        license=c.license,
        paper_ids=c.paper_ids,
        origin_url=UPSTREAM,
        notes=(c.description,),
    )
