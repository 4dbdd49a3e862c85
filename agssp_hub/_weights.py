"""Weights through the Hugging Face cache: resolve, verify the full sha256, install local files."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._registry import get_checkpoint

__all__ = [
    "AgsspHubError",
    "MissingWeightsError",
    "HashMismatchError",
    "MANIFEST",
    "hf_cache_dir",
    "sha256_file",
    "resolve_file",
    "load_state_dict",
    "load_pth_state_dict",
    "install_state_dict",
    "install_files",
    "local_status",
]

MANIFEST = "agssp_manifest.json"


class AgsspHubError(RuntimeError):
    """Base class of agssp-hub errors that a user can act on."""


class MissingWeightsError(AgsspHubError, FileNotFoundError):
    """The weights of a registered model are neither cached nor downloadable."""


class HashMismatchError(AgsspHubError):
    """A weights file does not have the sha256 it must have."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hf_cache_dir() -> Path:
    """The HF hub cache in effect now (``HF_HUB_CACHE``, then ``HF_HOME/hub``, then huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    if "HF_HUB_OFFLINE" in os.environ:
        return _truthy(os.environ["HF_HUB_OFFLINE"])
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Full hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _repo_dir(repo_id: str) -> Path:
    return hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"


def _provide_hint(name: str) -> str:
    entry = get_checkpoint(name)
    src = entry.source
    if src.get("kind") == "official":
        how = (
            f"download the official file {src['file']} ({src['url']}) and run `agssp-hub convert {src['file']}`"
        )
    else:
        how = f"run `{src.get('command', 'python recipes/reproduce.py --model ' + name)}`"
    return f"{how}, or install a weights file with `agssp-hub import {name} FILE`"


def _expected_sha256(name: str, filename: str, path: Path) -> tuple[str, str]:
    manifest = path.parent / MANIFEST
    if manifest.is_file():
        files = json.loads(manifest.read_text()).get("files", {})
        if filename in files:
            return files[filename]["sha256"], f"the install manifest {manifest}"
    entry = get_checkpoint(name)
    if entry.sha256 and filename == entry.hf_hub_filename:
        return entry.sha256, "the agssp-hub registry"
    raise HashMismatchError(
        f"{path}: no sha256 is known for {name}/{filename} (no registry hash, no {MANIFEST}); refusing to load "
        f"unverified weights. Install the file with `agssp-hub import {name} FILE`."
    )


def verify_file(name: str, path: Path, filename: str | None = None) -> str:
    """Check a cached file's full sha256 against its manifest or the registry; return the hash."""
    filename = filename or path.name
    expected, where = _expected_sha256(name, filename, path)
    actual = sha256_file(path)
    if actual != expected:
        raise HashMismatchError(
            f"{path}: sha256 mismatch for {name}: file has {actual}, {where} expects {expected}. "
            f"The file is corrupted or was replaced; re-install it ({_provide_hint(name)})."
        )
    return actual


def verify_in_background(name: str, path: Path, filename: str | None = None) -> Callable[[], str]:
    """Start hashing ``path`` in a thread (hashlib releases the GIL); the returned call joins and raises on mismatch."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["sha256"] = verify_file(name, path, filename)
        except BaseException as err:  # re-raised in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=work, name=f"sha256-{name}", daemon=True)
    thread.start()

    def join() -> str:
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["sha256"]

    return join


def resolve_file(name: str, filename: str | None = None, verify: bool = True) -> Path:
    """Path of a verified weights file of ``name`` from the HF cache (downloading it when online)."""
    from huggingface_hub import hf_hub_download

    entry = get_checkpoint(name)
    filename = filename or entry.hf_hub_filename
    try:
        path = Path(
            hf_hub_download(
                entry.hf_hub_id,
                filename,
                cache_dir=hf_cache_dir(),
                local_files_only=_offline(),
            )
        )
    except Exception as err:  # offline miss, DNS failure with nothing cached, repo not found, ...
        raise MissingWeightsError(
            f"No weights for {name!r}: {filename} of {entry.hf_hub_id} is not in the HF cache {hf_cache_dir()} "
            f"and could not be downloaded ({type(err).__name__}). To provide them: {_provide_hint(name)}."
        ) from None
    if verify:
        verify_file(name, path, filename)
    return path


def load_state_dict(name: str, filename: str | None = None) -> dict[str, Tensor]:
    """The verified safetensors state dict of ``name``."""
    from safetensors.torch import load_file

    return load_file(resolve_file(name, filename))


def load_pth_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A plain state dict from a ``.pth`` (``weights_only=True``) or ``.safetensors`` file, unwrapping common nests."""
    path = Path(path)
    if not path.is_file():
        raise AgsspHubError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:
            raise AgsspHubError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise AgsspHubError(
            f"{path}: cannot be loaded with torch.load(weights_only=True): {str(err).splitlines()[0]}. "
            "Only plain tensor state dicts are accepted; pickled objects are never executed."
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise AgsspHubError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def install_files(name: str, files: Mapping[str, str | os.PathLike[str]], *, source: dict[str, Any]) -> Path:
    """Install files as a new snapshot of ``name``'s hub repo in the HF cache; return the snapshot dir."""
    entry = get_checkpoint(name)
    repo = _repo_dir(entry.hf_hub_id)
    manifest: dict[str, Any] = {
        "name": name,
        "hf_hub_id": entry.hf_hub_id,
        "installed_by": "agssp-hub",
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "files": {},
    }
    for filename, src in sorted(files.items()):
        src = Path(src)
        manifest["files"][filename] = {"sha256": sha256_file(src), "size": src.stat().st_size}
    identity = json.dumps({k: manifest[k] for k in ("name", "files")}, sort_keys=True).encode()
    commit = hashlib.sha1(identity).hexdigest()
    snapshot = repo / "snapshots" / commit
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo.parent if repo.parent.exists() else None))
    try:
        for filename, src in files.items():
            target = staging / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_copy(Path(src), target)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        if snapshot.exists():
            shutil.rmtree(snapshot)
        os.replace(staging, snapshot)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    ref_tmp = repo / "refs" / f".main.tmp-{os.getpid()}"
    ref_tmp.write_text(commit)
    os.replace(ref_tmp, repo / "refs" / "main")
    return snapshot


def install_state_dict(
    name: str,
    state_dict: Mapping[str, Tensor],
    *,
    source: dict[str, Any],
    filename: str = "model.safetensors",
) -> Path:
    """Install a state dict (as safetensors; backbones also get config.json and a card); return the weights path."""
    from safetensors.torch import save_file

    entry = get_checkpoint(name)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        if entry.family == "backbone" and filename == "model.safetensors":
            from .hf import save_backbone_dir

            save_backbone_dir(dict(state_dict), tmp_dir, name=name)
            files = {p.name: p for p in tmp_dir.iterdir() if p.is_file()}
        else:
            path = tmp_dir / filename
            save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(path))
            files = {filename: path}
        snapshot = install_files(name, files, source=source)
    return snapshot / filename


def local_status(name: str) -> str:
    """Whether ``name``'s weights are in the cache: 'installed (local)', 'cached', or 'missing'."""
    entry = get_checkpoint(name)
    repo = _repo_dir(entry.hf_hub_id)
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return "missing"
    snap = repo / "snapshots" / ref.read_text().strip()
    if not (snap / entry.hf_hub_filename).exists():
        return "missing"
    return "installed (local)" if (snap / MANIFEST).is_file() else "cached"
