"""KeAD anomaly maps on open_clip (method-spec §1): v-v surgery, knowledge prompts, zero-shot + 4-shot memory.

The visual tower of an open_clip model is run block by block here (its own ``ln_1``, ``attn.in_proj_weight``,
``attn.out_proj``, ``ln_2`` and ``mlp`` modules), adding the value-value ("v-v") attention path on blocks 4-12.
Taps after blocks 3/6/9/12 are projected with ``ln_post`` and ``proj``. By default the official aliasing is kept:
the v-v taps of blocks 6 and 9 alias the final v-v tensor, so the layer average is (map_3 + 3·map_vv12)/4;
``aliased_taps=False`` gives the "fixed" variant with per-block snapshots.
Output per image: zero-shot map + few-shot memory map (range 0..2), float32 on the patch grid (15×15 at 240 px).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agssp_hub import sha256_file

__all__ = [
    "KEAD_MODEL",
    "KEAD_PRETRAINED_TAG",
    "KEAD_WEIGHTS_FILE",
    "KEAD_WEIGHTS_SHA256_PREFIX",
    "TEMPLATES",
    "KeADConfig",
    "KeAD",
    "load_knowledge",
    "build_prompts",
    "create_clip",
    "resolve_clip_weights",
]

KEAD_MODEL = "ViT-B-16-plus-240"
KEAD_PRETRAINED_TAG = "laion400m_e32"
KEAD_WEIGHTS_FILE = "vit_b_16_plus_240-laion400m_e32-699c4b84.pt"
# open_clip release files carry the first 8 hex digits of their SHA-256 in the name. The full digest is recorded
# in every manifest; open_clip's hub entry for laion400m_e32 points at the *e31* HF repo, so the hub is never
# trusted for the tag: the file is verified by this prefix (or by a full digest the caller pins).
KEAD_WEIGHTS_SHA256_PREFIX = "699c4b84"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.", "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a jpeg corrupted photo of the {}.", "a blurry photo of the {}.",
    "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.", "a photo of a small {}.",
    "a photo of the small {}.", "a photo of a large {}.", "a photo of the large {}.",
    "a photo of the {} for visual inspection.", "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.", "a photo of a {} for anomaly detection.",
)
NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}")
ANOMALY_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")


@dataclass
class KeADConfig:
    """Settings of the KeAD generator (defaults reproduce the official run)."""

    model_name: str = KEAD_MODEL
    surgery_blocks: tuple[int, ...] = tuple(range(4, 13))  # 1-indexed
    taps: tuple[int, ...] = (3, 6, 9, 12)  # 1-indexed, after the block
    aliased_taps: bool = True
    temperature: float = 0.07
    upsample: int | None = None  # e.g. 240 for a bilinear (align_corners=True) upsampled map
    extra: dict[str, Any] = field(default_factory=dict)


def load_knowledge(path: str | Path, category: str | None = None) -> tuple[str, dict[str, Any]]:
    """Read a knowledge JSON (official schema: ``{cat: {des: {good, defect}, map, samples}}``) and pick a category."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read knowledge JSON ({e})") from e
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty object of categories")
    if category is None:
        if len(data) != 1:
            raise ValueError(f"{path}: holds categories {sorted(data)}; choose one with category=/--category")
        category = next(iter(data))
    if category not in data:
        raise ValueError(f"{path}: no category {category!r} (has {sorted(data)})")
    entry = data[category]
    des = entry.get("des", {})
    for key in ("good", "defect"):
        if not isinstance(des.get(key), list) or not all(isinstance(s, str) and "{}" in s for s in des[key]):
            raise ValueError(f"{path}: {category}.des.{key} must be a list of strings containing '{{}}'")
    if not isinstance(entry.get("map"), str):
        raise ValueError(f"{path}: {category}.map must be the object phrase (a string)")
    samples = [str((path.parent / s).resolve()) if not Path(s).is_absolute() else s for s in entry.get("samples", [])]
    return category, {"des": des, "map": entry["map"], "samples": samples}


def build_prompts(knowledge: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """Normal, anomaly and empty-template prompts (``use_detailed=True``: generic states + the descriptions)."""
    obj = knowledge["map"]
    normal = [s.format(obj) for s in (*NORMAL_STATES, *knowledge["des"]["good"])]
    anomaly = [s.format(obj) for s in (*ANOMALY_STATES, *knowledge["des"]["defect"])]
    wrap = lambda states: [t.format(s) for s in states for t in TEMPLATES]  # noqa: E731
    return wrap(normal), wrap(anomaly), [t.format("") for t in TEMPLATES]


def resolve_clip_weights(weights: str | Path, sha256: str | None = None) -> tuple[Path, str]:
    """Find the CLIP weights (a file, or ``hf-hub:org/repo/file`` in the HF cache) and verify their SHA-256.

    ``sha256`` may be a full digest or a prefix; when omitted and the file is the laion400m_e32 release file, its
    known 8-hex prefix is checked. Returns the path and its full digest.
    """
    weights = str(weights)
    if weights.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        parts = weights[len("hf-hub:"):].split("/")
        if len(parts) < 3:
            raise ValueError(f"{weights}: use hf-hub:<org>/<repo>/<filename>")
        path = Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    else:
        path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CLIP weights not found")
    digest = sha256_file(path)
    want = sha256 or (KEAD_WEIGHTS_SHA256_PREFIX if path.name == KEAD_WEIGHTS_FILE else None)
    if want is not None and not digest.startswith(want.lower()):
        raise RuntimeError(f"{path}: sha256 {digest} does not match the pinned {want}")
    return path, digest


def create_clip(
    model_name: str = KEAD_MODEL,
    weights: str | Path | None = None,
    sha256: str | None = None,
    model_cfg: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, str | None]:
    """Build an open_clip model (named config or an explicit ``model_cfg`` dict) and load verified weights.

    Without ``weights`` the model keeps its random init (tests, throughput). Returns the model and weights sha256.
    """
    import open_clip

    if model_cfg is not None:
        from open_clip.factory import _MODEL_CONFIGS

        _MODEL_CONFIGS[model_name] = dict(model_cfg)  # open_clip's registry of architectures (add_model_config's)
    model = open_clip.create_model(model_name, pretrained=None)
    digest = None
    if weights is not None:
        path, digest = resolve_clip_weights(weights, sha256)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        model.load_state_dict(state, strict=True)
    return model.eval(), digest


class KeAD:
    """KeAD anomaly-map generator around an open_clip model (eval mode, no grad)."""

    def __init__(self, model: torch.nn.Module, knowledge: dict[str, Any], cfg: KeADConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        """Precompute the text directions and (when ``knowledge['samples']`` is set) the few-shot memory."""
        import open_clip
        from torchvision.transforms import v2

        self.cfg = cfg or KeADConfig()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        visual = model.visual
        size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
        self.image_size = tuple(int(s) for s in size)
        self.transform = v2.Compose([
            v2.ToImage(),
            v2.Resize(self.image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(OPENAI_MEAN, OPENAI_STD),
        ])
        ctx = int(getattr(model, "context_length", 77))
        self.tokenizer = open_clip.get_tokenizer("ViT-L-14", context_length=ctx)
        self.text = self._text_directions(knowledge)
        self.memory: list[Tensor] | None = None
        if knowledge.get("samples"):
            self.set_memory([Path(s) for s in knowledge["samples"]])

    @torch.no_grad()
    def _encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Mean of the L2-normalised prompt embeddings, re-normalised."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return F.normalize(emb.mean(0), dim=-1)

    def _text_directions(self, knowledge: dict[str, Any]) -> Tensor:
        """T = [t_n − r, t_a − r], each column L2-normalised (D×2)."""
        normal, anomaly, empty = build_prompts(knowledge)
        r = self._encode_prompts(empty)
        t = torch.stack([self._encode_prompts(normal) - r, self._encode_prompts(anomaly) - r], dim=1)
        return F.normalize(t, dim=0)

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 H×W×3 arrays → a normalised batch (squash-resize, bicubic, OpenAI mean/std)."""
        return torch.stack([self.transform(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1))
                            for im in images]).to(self.device)

    @staticmethod
    def _attention(attn: torch.nn.MultiheadAttention, h: Tensor) -> tuple[Tensor, Tensor]:
        """Standard q-k attention and the v-v attention of one block from its own in/out projections."""
        b, n, d = h.shape
        heads = attn.num_heads
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out_vv = F.scaled_dot_product_attention(v, v, v)  # softmax(v·vᵀ/√d)·v
        merge = lambda t: F.linear(t.transpose(1, 2).reshape(b, n, d), attn.out_proj.weight, attn.out_proj.bias)  # noqa: E731
        return merge(out), merge(out_vv)

    @torch.no_grad()
    def tokens(self, x: Tensor) -> list[Tensor]:
        """Projected tokens (B×(1+N)×E, CLS first) at each tap, with v-v surgery on the configured blocks."""
        visual = self.model.visual
        x = visual.conv1(x)
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        taps: dict[int, Tensor | str] = {}
        x_vv: Tensor | None = None
        surgery = set(self.cfg.surgery_blocks)
        for i, blk in enumerate(visual.transformer.resblocks, start=1):
            if i not in surgery:
                x = blk(x)
            else:
                a, a_vv = self._attention(blk.attn, blk.ln_1(x))
                x_vv = x + a_vv if x_vv is None else x_vv + a_vv  # the v-v path has no FFN
                x = x + blk.ls_1(a)
                x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
            if i in self.cfg.taps:
                if x_vv is None:
                    taps[i] = x
                else:
                    taps[i] = "vv_final" if self.cfg.aliased_taps else x_vv
        out = []
        for i in self.cfg.taps:
            t = taps[i]
            t = x_vv if isinstance(t, str) else t
            out.append(visual.ln_post(t) @ visual.proj)
        return out

    @torch.no_grad()
    def set_memory(self, normals: Sequence[Path | np.ndarray]) -> None:
        """Few-shot memory: the patch tokens (per tap, CLS removed, L2-normalised) of all given normal images."""
        from ..data import load_image

        imgs = [load_image(p) if not isinstance(p, np.ndarray) else p for p in normals]
        if not imgs:
            self.memory = None
            return
        taps = self.tokens(self.preprocess(imgs))
        self.memory = [F.normalize(t[:, 1:].reshape(-1, t.shape[-1]), dim=-1) for t in taps]

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Maps for a batch of RGB uint8 images: B×g×g float32 (zero-shot + few-shot memory when set)."""
        x = self.preprocess(images)
        taps = self.tokens(x)
        b = x.shape[0]
        gh, gw = (s // p for s, p in zip(self.image_size, _patch_size(self.model.visual)))
        zs = torch.zeros(b, gh * gw, device=self.device)
        fs = torch.zeros_like(zs)
        for li, t in enumerate(taps):
            p = F.normalize(t[:, 1:], dim=-1)
            zs += (p @ self.text / self.cfg.temperature).softmax(-1)[..., 1]
            if self.memory is not None:
                sim = p.reshape(-1, p.shape[-1]) @ self.memory[li].T
                fs += (0.5 * (1.0 - sim.max(dim=1).values)).view(b, -1)
        amap = (zs + fs) / len(taps)
        amap = amap.view(b, 1, gh, gw)
        if self.cfg.upsample:
            amap = F.interpolate(amap, size=(self.cfg.upsample,) * 2, mode="bilinear", align_corners=True)
        return amap[:, 0].float().cpu().numpy()


def _patch_size(visual: torch.nn.Module) -> tuple[int, int]:
    """Patch size of an open_clip VisionTransformer as (h, w)."""
    ks = visual.conv1.kernel_size
    return (int(ks[0]), int(ks[1]))
