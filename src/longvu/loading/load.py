"""Loading a LongVU checkpoint: tokenizer, decoder LLM, SVA connector, vision towers.

The released checkpoints (``cambrian_qwen``, ``cambrian_llama``) hold the decoder
and the connector in one set of sharded safetensors; the vision towers are loaded
separately.  We build the decoder with transformers' own Qwen2 / Llama classes and
match every tensor by name: a tensor the model expects but the files lack, or one
nobody claims, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DEFAULT_MODEL, LongVUConfig
from ..errors import CheckpointError, LongVUError
from ..model.connector import SVAConnector
from ..model.context import chat_template
from ..model.devices import configure_precision, pick_device, pick_dtype  # noqa: F401 (longvu.loading.load names)
from ..model.towers import VisionTower
from .checkpoint import (  # noqa: F401 (longvu.loading.load names, kept)
    Checkpoint,
    load_tokenizer,
    offline_mode,
    open_checkpoint,
    quiet_transformers,
    resolve_checkpoint,
    weight_index,
)
from .quantize import check_scheme, quantization_config
from .towers import load_tower, resolve_tower_folder

CONNECTOR_PREFIXES = ("model.mm_projector", "model.vision_sampler", "model.vision_query", "model.image_newline")


def build_llm_config(cfg: LongVUConfig):
    # lazy: transformers is imported only when this runs (keeps the import light and quiet)
    from transformers import LlamaConfig, Qwen2Config

    raw = {k: v for k, v in cfg.llm_config.items() if k not in ("model_type", "architectures", "_name_or_path")}
    if cfg.model_type == "cambrian_qwen":
        raw["rope_scaling"] = None  # the reference's CambrianQwenForCausalLM drops it
        return Qwen2Config(**raw)
    return LlamaConfig(**raw)


@dataclass(frozen=True)
class LoadOptions:
    """Where each part of the model goes and how it is shrunk (``--quantize``, ``--vision-*``).

    The defaults put everything on ``device`` in ``dtype``, unquantized.

    Attributes:
        quantize: ``"int8"``, ``"nf4"`` or ``"int4"``: the decoder's linear layers (see
            :mod:`longvu.loading.quantize` for the library each uses on each device).
        vision_device, vision_dtype: the two vision towers' device and dtype (default: the
            LLM's).  Their features are handed to the connector on the LLM's device.
        llm_gpu_memory: bytes of decoder weights allowed on the GPU; the layers that do not
            fit stay in CPU RAM and are streamed in as they run (accelerate's ``device_map``).
    """

    quantize: str | None = None
    vision_device: str | None = None
    vision_dtype: str | None = None
    llm_gpu_memory: int | None = None


class LazyTower:
    """A vision tower loaded on first use.

    A question about a video already in the feature cache needs no tower at all, so the
    towers (1.5B parameters for the released checkpoints) are only read when a video
    has to be encoded.  The folder is resolved, and its config read, at model load.
    """

    def __init__(
        self, name: str, folder: Path, dtype: torch.dtype, device: torch.device, dino_image_size: int,
        output_device: torch.device | None = None,
    ) -> None:  # fmt: skip
        self.name, self.folder, self.dtype, self.device = name, folder, dtype, device
        self.dino_image_size = dino_image_size
        self.output_device = output_device if output_device is not None and output_device != device else None
        self.hidden_size = tower_width(folder)
        self._tower: VisionTower | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._tower is not None

    def get(self) -> VisionTower:
        with self._lock:
            if self._tower is None:
                self._tower = load_tower(self.name, self.folder, dtype=self.dtype, device=self.device,
                                         dino_image_size=self.dino_image_size)  # fmt: skip
                self._tower.output_device = self.output_device
            return self._tower


def tower_width(folder: Path) -> int:
    """Hidden size of a SigLIP (full or vision-only config) or DINOv2 tower, from its config.json."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/config.json: {e}") from None
    raw = raw.get("vision_config", raw)
    if "hidden_size" not in raw:
        raise CheckpointError(f"{folder}/config.json has no hidden_size")
    return int(raw["hidden_size"])


@dataclass
class LongVUModel:
    """Everything loaded from a checkpoint (the vision towers on first use)."""

    cfg: LongVUConfig
    tokenizer: object
    llm: torch.nn.Module
    connector: SVAConnector
    siglip_tower: LazyTower
    dinov2_tower: LazyTower
    generation_config: object
    device: torch.device
    dtype: torch.dtype
    folder: Path
    weight_files: list[Path] = dataclasses.field(default_factory=list)
    options: LoadOptions = dataclasses.field(default_factory=LoadOptions)
    _fingerprint: str | None = dataclasses.field(default=None, repr=False)

    def fingerprint(self) -> str:
        """Identity of the vision-side weights (towers and connector) and of the config."""
        if self._fingerprint is None:
            # lazy: imported under the statement around it (warnings silenced, or only on this branch)
            from .checkpoint import weights_fingerprint

            h = hashlib.sha256(weights_fingerprint(self.weight_files).encode())
            h.update(json.dumps(self.cfg.llm_config, sort_keys=True, default=str).encode())
            tower = self.siglip_tower
            if (tower.dtype, tower.device) != (self.dtype, self.device):  # towers placed apart: other features
                h.update(f"towers {tower.dtype} {tower.device.type}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def siglip(self) -> VisionTower:
        return self.siglip_tower.get()

    @property
    def dinov2(self) -> VisionTower:
        return self.dinov2_tower.get()

    @property
    def template(self) -> str:

        return chat_template(self.cfg)

    @property
    def max_positions(self) -> int:
        """Positions the LLM can attend to (prompt plus answer)."""
        return int(getattr(self.llm.config, "max_position_embeddings", None) or self.cfg.tokenizer_model_max_length)

    def embed(self, ids: list[int]) -> torch.Tensor:
        """``[n]`` token ids -> ``[n, H]`` input embeddings."""
        emb = self.llm.get_input_embeddings()
        out = emb(torch.tensor(ids, dtype=torch.long, device=emb.weight.device))  # offloaded: on the CPU
        return out.to(self.device)


def load_model(
    model: str | os.PathLike | Checkpoint = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str = "auto",
    siglip: str | None = None,
    dinov2: str | None = None,
    overrides: dict | None = None,
    options: LoadOptions | None = None,
) -> LongVUModel:
    """Load a LongVU checkpoint from a folder or hub id (see :func:`resolve_checkpoint`), or from a
    :class:`~longvu.loading.checkpoint.Checkpoint` already opened (with ``overrides`` applied)."""
    with quiet_transformers():
        return _load_model(model, device, dtype, siglip, dinov2, overrides, options or LoadOptions())


def _load_model(model, device: str, dtype: str, siglip, dinov2, overrides, opts: LoadOptions) -> LongVUModel:
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    vdev = pick_device(opts.vision_device) if opts.vision_device else dev
    vdt = pick_dtype(opts.vision_dtype, vdev) if opts.vision_dtype else dt
    check_scheme(opts.quantize, dev.type)  # before anything is read
    if opts.llm_gpu_memory is not None and dev.type != "cuda":
        raise LongVUError("--llm-gpu-memory (offloading decoder layers to CPU RAM) needs --device cuda")
    # folder, config, weight index, tokenizer (no weight read); a Checkpoint already opened is used as it is
    ckpt = model if isinstance(model, Checkpoint) else open_checkpoint(model, overrides)
    folder, cfg, weights, tokenizer = ckpt.folder, ckpt.cfg, ckpt.weights, ckpt.tokenizer
    configure_precision(dev, dt)  # float32 on CUDA: no TF32 (process-wide flags, see devices.py)

    offline = offline_mode()
    towers = {}
    for name in cfg.vision_tower_names:
        # lazy: imported under the statement around it (warnings silenced, or only on this branch)
        from ..model.towers import tower_kind

        kind = tower_kind(name)
        explicit = siglip if kind == "siglip" else dinov2
        tf = resolve_tower_folder(name, folder, explicit, offline=offline)
        if not (tf / "preprocessor_config.json").is_file():
            raise CheckpointError(f"{tf}: no preprocessor_config.json for the {kind} tower")
        if not list(tf.glob("*.safetensors")):
            raise CheckpointError(f"{tf}: no .safetensors weights")
        towers[kind] = LazyTower(name, tf, vdt, vdev, cfg.dino_image_size, output_device=dev)
    if set(towers) != {"siglip", "dinov2"}:
        raise CheckpointError(f"expected a SigLIP and a DINOv2 tower, config lists {cfg.vision_tower_names}")

    llm = _load_decoder(cfg, folder, weights, len(tokenizer), dev, dt, opts)

    widths = [towers["siglip"].hidden_size, towers["dinov2"].hidden_size]
    connector = SVAConnector(cfg, widths)
    _load_connector(connector, folder, weights, dt)
    connector.to(dev).eval()

    # lazy: transformers is imported only when this runs (keeps the import light and quiet)
    from transformers import GenerationConfig

    if (folder / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    else:
        gen = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
    files = sorted({folder / weights[k] for k in weights if k.startswith(CONNECTOR_PREFIXES)})
    for tower in towers.values():
        files += sorted(Path(tower.folder).glob("*.safetensors"))
    return LongVUModel(
        cfg, tokenizer, llm, connector, towers["siglip"], towers["dinov2"], gen, dev, dt, folder, weight_files=files,
        options=opts,
    )  # fmt: skip


def _load_decoder(
    cfg: LongVUConfig, folder: Path, weights: dict[str, str], n_tok: int, dev: torch.device, dt: torch.dtype,
    opts: LoadOptions,
):  # fmt: skip
    """The decoder, quantized and placed as ``opts`` says, its vocabulary fitted to the tokenizer."""
    device_map = _device_map(dev, opts.llm_gpu_memory)
    max_memory = None
    if opts.llm_gpu_memory is not None:
        max_memory = {dev.index or 0: opts.llm_gpu_memory, "cpu": _host_memory()}
    llm = _load_llm(cfg, folder, weights, dt, quantization=quantization_config(opts.quantize, dev, dt),
                    device_map=device_map, max_memory=max_memory)  # fmt: skip
    _fit_vocab(llm, n_tok)
    if device_map is None:
        llm.to(dev)
    return llm.eval()


def _device_map(dev: torch.device, gpu_bytes: int | None):
    """Load straight onto the GPU (no full copy in host RAM); with a GPU budget, let accelerate
    place what fits there and keep the remaining decoder layers in CPU RAM."""
    if dev.type != "cuda":
        return None
    if gpu_bytes is None:
        return {"": dev}
    return "auto"


def _host_memory() -> int:
    """Physical RAM in bytes (what accelerate may use for offloaded layers)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _fit_vocab(llm, n_tok: int) -> None:
    """Make the vocabulary ``len(tokenizer)`` rows, as the reference builder's ``resize_token_embeddings``.

    Shrinking (Qwen2: 152064 rows -> 151646) keeps the first rows as views of the loaded
    weights instead of copying them: the same numbers, without a second copy of the
    embedding and the head (2 x 545M parameters for Qwen2-7B) in memory, and it works
    on quantized heads.  Growing (not done by any released checkpoint) uses transformers'.
    """
    emb = llm.get_input_embeddings()
    rows = emb.weight.shape[0]
    if rows == n_tok:
        return
    if rows < n_tok:
        llm.resize_token_embeddings(n_tok, mean_resizing=False)
        return
    head = llm.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    emb.weight = torch.nn.Parameter(emb.weight.data[:n_tok], requires_grad=False)
    emb.num_embeddings = n_tok
    if head is not None:
        head.weight = emb.weight if tied else torch.nn.Parameter(head.weight.data[:n_tok], requires_grad=False)
        head.out_features = n_tok
    llm.config.vocab_size = n_tok


def decoder_class(cfg: LongVUConfig):
    """The transformers class of the checkpoint's decoder; importing its modeling module is most of
    a load's import time (the CLI calls this first, to say how long imports took)."""
    with quiet_transformers():  # the modeling import may bring torchao, whose notes stay silent
        # lazy: transformers is imported only when this runs (keeps the import light and quiet)
        import transformers

        # the one modeling module this checkpoint needs (transformers imports each on first access)
        return transformers.Qwen2ForCausalLM if cfg.model_type == "cambrian_qwen" else transformers.LlamaForCausalLM


def _load_llm(
    cfg: LongVUConfig, folder: Path, weights: dict[str, str], dtype: torch.dtype, *, quantization=None,
    device_map=None, max_memory: dict | None = None,
):  # fmt: skip
    cls = decoder_class(cfg)
    llm_cfg = build_llm_config(cfg)
    extra = {}
    if quantization is not None:
        extra["quantization_config"] = quantization
    if device_map is not None:
        extra["device_map"] = device_map
    if max_memory is not None:
        extra["max_memory"] = max_memory
    try:
        llm, info = cls.from_pretrained(
            str(folder), config=llm_cfg, dtype=dtype, local_files_only=True, output_loading_info=True,
            attn_implementation="sdpa", **extra,
        )  # fmt: skip
    except ImportError as e:  # accelerate / a quantization library missing
        raise LongVUError(f"cannot load the language model: {e}") from None
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: cannot load the language model ({e})") from None
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if not k.startswith(CONNECTOR_PREFIXES))
    mismatched = info.get("mismatched_keys", [])
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {unexpected[:5]}")
        if mismatched:
            parts.append(
                f"tensor(s) of the wrong shape {[m[0] if isinstance(m, tuple) else m for m in mismatched][:5]}"
            )
        raise CheckpointError(f"{folder}: {'; '.join(parts)}")
    return llm


def _load_connector(connector: SVAConnector, folder: Path, weights: dict[str, str], dtype: torch.dtype) -> None:
    # lazy: safetensors is imported only when this runs (keeps the import light and quiet)
    from safetensors import safe_open

    expected = {f"model.{k}" for k in connector.state_dict()}
    present = {k for k in weights if k.startswith(CONNECTOR_PREFIXES)}
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing connector tensor(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected connector tensor(s) {unexpected[:5]}")
        raise CheckpointError(f"{folder}: {'; '.join(parts)}")
    by_file: dict[str, list[str]] = {}
    for k in sorted(expected):
        by_file.setdefault(weights[k], []).append(k)
    state = {}
    for fname, keys in by_file.items():
        with safe_open(str(folder / fname), "pt") as f:
            for k in keys:
                state[k.removeprefix("model.")] = f.get_tensor(k).to(dtype)
    own = connector.state_dict()
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{folder}: connector tensor model.{k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
        )
    connector.to(dtype)
    connector.load_state_dict(state, strict=True)
