"""Fine-tuned weights on top of a base checkpoint: save, load (``--adapter DIR``) and merge.

An adapter folder, as ``longvu train`` writes it::

    longvu_adapter.json        # format, the base it belongs to (base_id), what it holds
    adapter_config.json        # with LoRA: peft's adapter for the decoder LLM
    adapter_model.safetensors
    connector.safetensors      # trained connector tensors, named as in the checkpoint (model.mm_projector...)
    llm.safetensors            # without LoRA, a trained LLM: its tensors, named as in the checkpoint

:func:`apply_adapter` puts them into a loaded :class:`~longvu.loading.load.LongVUModel` (a LoRA
adapter is merged into the decoder's weights, so generation runs at the base's speed);
:func:`merge_checkpoint` writes base + adapter as a full checkpoint in the released layout.
An adapter made for another base, or one whose tensors do not fit the checkpoint, is a
:class:`~longvu.errors.CheckpointError` (one line).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, LongVUError, install_hint
from ..files import atomic_write_text
from .checkpoint import weight_index, weights_fingerprint
from .load import load_model
from .quantize import quiet_quantizers

MANIFEST = "longvu_adapter.json"
FORMAT = "longvu-adapter/1"
CONNECTOR_FILE = "connector.safetensors"
LLM_FILE = "llm.safetensors"


def base_id(folder: str | os.PathLike) -> str:
    """Identity of a checkpoint's own weights and config (not its path): what an adapter belongs to."""

    folder = Path(folder)
    files = sorted({folder / f for f in weight_index(folder).values()})
    h = hashlib.sha256(weights_fingerprint(files).encode())
    h.update((folder / "config.json").read_bytes())
    return h.hexdigest()[:32]


def write_manifest(
    out: Path, model, *, lora: bool, trained: list[str], files: list[str], overrides: dict | None = None
) -> None:
    """``longvu_adapter.json``: which base (``base_id``, its folder and shapes), what was trained, and the
    config overrides (``--set``) training ran with: pass the same ones when using the adapter."""
    cfg = model.cfg
    info = {
        "format": FORMAT,
        "base_id": base_id(model.folder),
        "base_model": str(model.folder),
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "vocab_size": len(model.tokenizer),
        "lora": lora,
        "trained": trained,
        "files": sorted(files),
        "overrides": dict(overrides or {}),
    }
    atomic_write_text(out / MANIFEST, json.dumps(info, indent=1) + "\n")


def read_manifest(adapter: str | os.PathLike) -> dict:
    path = Path(adapter) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{adapter}: not an adapter folder (no {MANIFEST}; `longvu train` writes one)")
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    return info


def check_compatible(info: dict, model, adapter) -> None:
    """Refuse an adapter whose shapes do not fit ``model``, or that was trained on another base."""
    cfg = model.cfg
    have = {"model_type": cfg.model_type, "hidden_size": cfg.hidden_size, "vocab_size": len(model.tokenizer)}
    for key, value in have.items():
        if info.get(key) != value:
            raise CheckpointError(
                f"adapter {adapter} is incompatible with checkpoint {model.folder}: "
                f"{key} {info.get(key)!r} there, {value!r} here"
            )
    if info.get("base_id") != base_id(model.folder):
        raise CheckpointError(
            f"adapter {adapter} was trained on another base ({info.get('base_model')}), not {model.folder}; "
            "load it with that checkpoint"
        )


def adapter_tensors(adapter: str | os.PathLike, info: dict, model) -> dict[str, torch.Tensor]:
    """The adapter's weights as checkpoint tensors (``model.layers...``, ``model.mm_projector...``):
    a LoRA adapter is merged into the decoder first."""

    adapter = Path(adapter)
    out: dict[str, torch.Tensor] = {}
    if info.get("lora"):
        merged = _merged_lora(adapter, model)
        out.update(merged)
    for name in (CONNECTOR_FILE, LLM_FILE):
        if (adapter / name).is_file():
            out.update(load_file(str(adapter / name)))
    return out


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Inside the block, peft's reading of transformers' deprecated ``is_gradient_checkpointing``
    (a FutureWarning about peft's code, not the user's) is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _merged_lora(adapter: Path, model) -> dict[str, torch.Tensor]:
    """Merge a LoRA adapter into ``model.llm`` in place (``W + B A * scale``); returns the tensors it changed."""

    try:
        with quiet_quantizers():  # peft imports torchao when it is installed
            # lazy: peft comes with the train extra
            from peft import PeftModel
    except ImportError:
        raise LongVUError(f"a LoRA adapter needs peft: {install_hint('train')}") from None
    try:
        with peft_quietly():
            peft_model = PeftModel.from_pretrained(model.llm, str(adapter), is_trainable=False)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        raise CheckpointError(f"adapter {adapter} does not fit {model.folder}: {str(e).splitlines()[0]}") from None
    targets = [n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    model.llm = peft_model.merge_and_unload()
    state = model.llm.state_dict()
    return {f"{t}.weight": state[f"{t}.weight"] for t in targets}


def apply_adapter(model, adapter: str | os.PathLike) -> None:
    """Load an adapter folder into a loaded model, in place (see the module docstring)."""
    info = read_manifest(adapter)
    check_compatible(info, model, adapter)
    if model.options.quantize:
        raise CheckpointError("--adapter cannot be combined with --quantize; `longvu merge` the adapter first")
    tensors = adapter_tensors(adapter, info, model)
    _load_into(model, tensors, adapter)
    files = [Path(adapter) / n for n in (CONNECTOR_FILE,) if (Path(adapter) / n).is_file()]
    model.weight_files = list(model.weight_files) + files  # cached features key on the connector's weights
    model._fingerprint = None


def _load_into(model, tensors: dict[str, torch.Tensor], adapter) -> None:
    """Copy checkpoint-named tensors into the decoder and the connector (shapes checked)."""
    targets = {f"model.{k}": v for k, v in model.connector.state_dict().items()}
    targets.update(model.llm.state_dict())
    with torch.no_grad():
        for name, value in tensors.items():
            own = targets.get(name)
            if own is None:
                raise CheckpointError(f"adapter {adapter}: tensor {name} is not in {model.folder}")
            if tuple(own.shape) != tuple(value.shape):
                raise CheckpointError(
                    f"adapter {adapter} is incompatible with {model.folder}: {name} has shape "
                    f"{tuple(value.shape)}, expected {tuple(own.shape)}"
                )
            own.copy_(value.to(own.dtype))


def merge_checkpoint(
    model_dir: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike, *, dtype: str | None = None
) -> Path:
    """Write base + adapter as a full checkpoint in the base's own layout (same files, same tensor names).

    Every file of the base is copied (tokenizer, configs, vision towers); each weight shard
    is rewritten with the adapter's tensors in place, in the base's dtype (the released
    checkpoints: bfloat16) unless ``dtype`` names another for every tensor of the shards.
    The folder appears complete or not at all (written beside ``out`` and renamed).
    """
    table = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise LongVUError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LongVUError(f"--out {out} exists and is not empty")
    model = load_model(model_dir, device="cpu", dtype="float32")
    info = read_manifest(adapter)
    check_compatible(info, model, adapter)
    tensors = adapter_tensors(adapter, info, model)
    tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=f".{out.name}.tmp-"))
    try:
        _write_merged(model.folder, tensors, tmp, table[dtype])
        if dtype is not None:
            _set_config_dtype(tmp / "config.json", dtype)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _set_config_dtype(path: Path, dtype: str) -> None:
    raw = json.loads(path.read_text())
    for key in ("torch_dtype", "dtype"):
        if key in raw:
            raw[key] = dtype
    atomic_write_text(path, json.dumps(raw, indent=2) + "\n")


def _write_merged(base: Path, tensors: dict[str, torch.Tensor], tmp: Path, dtype: torch.dtype | None) -> None:

    index = weight_index(base)
    shards = sorted(set(index.values()))
    for item in base.iterdir():
        if item.name in shards:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
    for shard in shards:
        with safe_open(str(base / shard), "pt") as f:
            meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}
        for k, v in state.items():
            want = dtype or v.dtype
            new = tensors[k].to(want) if k in tensors else v.to(want)
            if new.shape[0] < v.shape[0] and new.shape[1:] == v.shape[1:]:  # vocabulary fitted to the tokenizer
                new = torch.cat([new, v[new.shape[0] :].to(want)])
            state[k] = new.contiguous()
        save_file(state, str(tmp / shard), metadata=meta)
