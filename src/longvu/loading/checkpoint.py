"""The light half of loading a checkpoint: its folder, config, weight index and tokenizer.

Nothing here imports torch or transformers' modeling code, so the CLI can open a
checkpoint and refuse a bad folder or a question that cannot fit the context in about a
second, before :func:`longvu.model.load_model` (which starts with :func:`open_checkpoint`)
reads any weight.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import LongVUConfig
from ..errors import CheckpointError
from .quantize import quiet_quantizers


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder, or a hub id downloaded (or found in the hub cache).

    A name that cannot be a hub id (``./x``, ``/x``, ``a/b/c``), or whose first part is a local
    folder (``models/typo``), is a missing folder; otherwise the hub is asked, and a failure
    names both readings: not a local folder, and not on the hub (or its local cache, offline).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: a checkpoint must be a folder")
        return path
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or path.parent.is_dir():
        raise CheckpointError(f"{name}: no such checkpoint folder{_nearby(path)}")
    try:
        # lazy: huggingface_hub only on this path (the module imports without it)
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"],
                local_files_only=offline_mode(),
            )
        )
    except Exception as e:  # any hub failure becomes one actionable line
        raise CheckpointError(
            f"{name}: not a local folder, and {_hub_failure(e)}; pass --model PATH to a local checkpoint folder"
        ) from None


def _hub_failure(e: Exception) -> str:
    kind = type(e).__name__
    if kind == "LocalEntryNotFoundError":
        why = "HF_HUB_OFFLINE is set" if offline_mode() else "the hub could not be reached"
        return f"not in the local Hugging Face hub cache ({why})"
    if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
        return f"not a checkpoint the Hugging Face hub gives ({kind})"
    return f"could not be fetched from the Hugging Face hub ({kind})"


def _nearby(path: Path) -> str:
    """`` (did you mean models/x?)`` for a sibling folder with a close name, else nothing."""
    # lazy: difflib only on this error path
    import difflib

    parent = path.parent if str(path.parent) else Path(".")
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    near = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    return f" (did you mean {parent / near[0]}?)" if near else ""


def weight_index(folder: Path) -> dict[str, str]:
    """Tensor name -> shard file, from ``model.safetensors.index.json`` or a single file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e})") from None
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise CheckpointError(f"{folder}: missing weight shard(s) {', '.join(missing)}")
        return dict(weight_map)
    single = folder / "model.safetensors"
    if single.is_file():
        # lazy: safetensors only on this path (the module imports without it)
        from safetensors import safe_open

        with safe_open(str(single), "numpy") as f:  # the names only: no tensor is read, torch is not imported
            return {k: single.name for k in f.keys()}
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def tokenizer_class(folder: Path):
    """The checkpoint's tokenizer class (importing it is most of a tokenizer's load time)."""
    # lazy: transformers only on this path (the module imports without it)
    import transformers

    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: no tokenizer_config.json")
    cls_name = json.loads(cfg_path.read_text()).get("tokenizer_class") or "PreTrainedTokenizerFast"
    cls = getattr(transformers, cls_name, None) or getattr(transformers, cls_name.removesuffix("Fast"), None)
    return transformers.PreTrainedTokenizerFast if cls is None else cls


def load_tokenizer(folder: Path, cls=None):
    cls = cls or tokenizer_class(folder)
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # tokenizers raise many types for bad files
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars inside the block, then restore them.

    We report loading problems ourselves; the user's own transformers logging settings
    are left as they were.
    """
    # lazy: transformers only on this path (the module imports without it)
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    try:
        with quiet_quantizers():  # transformers may import torchao, which notes missing CUDA kernels
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@dataclass
class Checkpoint:
    """A checkpoint opened without reading a weight: what it is, and what its prompts look like."""

    folder: Path
    cfg: LongVUConfig
    weights: dict[str, str]  # tensor name -> shard file
    tokenizer: object
    import_s: float = 0.0  # of the time opening it took, the seconds spent importing the tokenizer's modules


def open_checkpoint(model: str | os.PathLike, overrides: dict | None = None) -> Checkpoint:
    """Resolve ``model`` (a folder or hub id), read its config (``overrides`` applied), check its
    weight index and load its tokenizer; a missing or malformed checkpoint is a :class:`CheckpointError`."""
    folder = resolve_checkpoint(model)
    cfg = LongVUConfig.from_checkpoint(folder)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    weights = weight_index(folder)
    t0 = time.perf_counter()
    with quiet_transformers():
        cls = tokenizer_class(folder)
        import_s = time.perf_counter() - t0
        tokenizer = load_tokenizer(folder, cls)
    return Checkpoint(folder, cfg, weights, tokenizer, import_s)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # files whose bytes are a model's weights


def folder_fingerprint(path: str | Path) -> str | None:
    """:func:`weights_fingerprint` of every weight file under a local folder (towers and adapters
    included), or ``None`` for a hub id: what tells a model retrained in place from the one before."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return None
    return weights_fingerprint([p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES])


def weights_fingerprint(files: list[Path]) -> str:
    """Cheap identity of weight files: name, size and the sha256 of their first and last MiB."""
    h = hashlib.sha256()
    for p in sorted(files):
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()
