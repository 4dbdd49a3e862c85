"""Small, independent re-implementations of the mm (mmdet / mmpretrain) layouts, written from method-spec §6.3.

They exist only to produce official-format state dicts with random weights and reference outputs for the
converter tests: mm key names, patch merging by ``nn.Unfold`` (channel order c·4 + kh·2 + kw) at the *end* of a
stage, relative position index built by the "double step" sequence, stage-output LayerNorms ``norm{i}``, and the
mmdet FPN (lateral 1x1, nearest top-down, 3x3 outputs, max-pool P6).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _windows(x: Tensor, ws: int) -> Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _unwindows(win: Tensor, ws: int, h: int, w: int) -> Tensor:
    b = win.shape[0] // ((h // ws) * (w // ws))
    x = win.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


class WindowMSA(nn.Module):
    """mm ``WindowMSA``: qkv, proj, relative position bias table + double-step index."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        seq1 = torch.arange(0, (2 * window - 1) * window, 2 * window - 1)
        seq2 = torch.arange(0, window)
        coords = (seq1[:, None] + seq2[None, :]).reshape(1, -1)
        self.register_buffer("relative_position_index", (coords + coords.T).flip(1).contiguous())

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Attention inside each window (``mask``: nW x N x N additive, or None)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.heads, n, n) + mask[None, :, None]).view(b, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class ShiftWindowMSA(nn.Module):
    """mm ``ShiftWindowMSA``: pad to the window, then shift; ``mmdet=False`` shrinks/unshifts small maps (mmpretrain)."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool, mmdet: bool) -> None:
        super().__init__()
        self.w_msa = WindowMSA(dim, heads, window)
        self.window, self.shift, self.mmdet = window, window // 2 if shift else 0, mmdet

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Shifted-window attention on a (B, H·W, C) token sequence."""
        b, _, c = x.shape
        h, w = hw
        ws, shift = self.window, self.shift
        if not self.mmdet and min(h, w) <= ws:
            assert min(h, w) == ws, "the reference supports feature == window only"
            shift = 0
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
        hp, wp = x.shape[1:3]
        mask = None
        if shift:
            x = torch.roll(x, (-shift, -shift), (1, 2))
            img = torch.zeros(1, hp, wp, 1)
            cnt = 0
            for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    img[:, hs, wsl, :] = cnt
                    cnt += 1
            mw = _windows(img, ws).squeeze(-1)
            mask = (mw[:, None, :] - mw[:, :, None]).ne(0).float() * -100.0
        out = _unwindows(self.w_msa(_windows(x, ws), mask), ws, hp, wp)
        if shift:
            out = torch.roll(out, (shift, shift), (1, 2))
        return out[:, :h, :w].reshape(b, h * w, c)


class SwinBlock(nn.Module):
    """mm ``SwinBlock``: norm1 -> attn -> residual, norm2 -> ffn (layers.0.0, GELU, layers.1) -> residual."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool, mmdet: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftWindowMSA(dim, heads, window, shift, mmdet)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Module()
        self.ffn.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """One block."""
        x = x + self.attn(self.norm1(x), hw)
        return x + self.ffn.layers(self.norm2(x))


class PatchMerging(nn.Module):
    """mm ``PatchMerging``: ``nn.Unfold(2, stride 2)`` (channel-major), LayerNorm(4C), Linear(4C, 2C, bias=False)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """Halve the resolution."""
        b, _, c = x.shape
        h, w = hw
        x = F.unfold(x.view(b, h, w, c).permute(0, 3, 1, 2), 2, stride=2).transpose(1, 2)
        return self.reduction(self.norm(x)), (h // 2, w // 2)


class MMSwin(nn.Module):
    """mm ``SwinTransformer`` layout: ``patch_embed``, ``stages.{s}`` (blocks + end-of-stage downsample), ``norm{i}``."""

    def __init__(
        self,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        heads: Sequence[int] = (4, 8, 16, 32),
        window: int = 7,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        mmdet: bool = False,
    ) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, embed_dim, 4, 4)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.stages = nn.ModuleList()
        dim = embed_dim
        self.dims = []
        for s, (depth, nh) in enumerate(zip(depths, heads)):
            stage = nn.Module()
            stage.blocks = nn.ModuleList(SwinBlock(dim, nh, window, i % 2 == 1, mmdet) for i in range(depth))
            if s < len(depths) - 1:
                stage.downsample = PatchMerging(dim)
            self.stages.append(stage)
            self.dims.append(dim)
            dim *= 2
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.dims[i]))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Normalised stage outputs (before each downsample), NCHW."""
        x = self.patch_embed.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        outs = []
        for s, stage in enumerate(self.stages):
            for block in stage.blocks:
                x = block(x, hw)
            if s in self.out_indices:
                out = getattr(self, f"norm{s}")(x)
                outs.append(out.view(x.shape[0], *hw, -1).permute(0, 3, 1, 2))
            if hasattr(stage, "downsample"):
                x, hw = stage.downsample(x, hw)
        return outs


class MMFPN(nn.Module):
    """mmdet ``FPN`` (4 inputs, 5 outputs, no extra convs): ``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for c in in_channels:
            lateral, fpn = nn.Module(), nn.Module()
            lateral.conv = nn.Conv2d(c, out_channels, 1)
            fpn.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            self.lateral_convs.append(lateral)
            self.fpn_convs.append(fpn)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Top-down pathway with nearest upsampling by size, then the 3x3 outputs and a stride-2 max-pool level."""
        lat = [m.conv(f) for m, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [m.conv(x) for m, x in zip(self.fpn_convs, lat)]
        return outs + [F.max_pool2d(outs[-1], 1, stride=2)]


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and norm statistic random, non-trivial values (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 1:  # norm weights
                t.copy_(1 + torch.randn(t.shape, generator=g) * 0.1)
            else:
                fan_in = max(1, t[0].numel())
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)
    return module
