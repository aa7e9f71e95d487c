"""Memory planner: predict, before loading anything, what a LongVU run needs, per component and stage.

Pure arithmetic on the configs (the checkpoint's ``config.json`` and its towers', or a
released model's preset in :mod:`longvu.loading.presets`).  Every term below is named, and the
handful of numbers that are measured rather than derived (activation multipliers, the
process's own footprint, the encoder's host buffers) live in :class:`Calibration`, so they
can be re-measured with ``python -m benchmarks.memory`` and changed in one place.

Stages, in the order a ``longvu ask`` runs them; the peak is the largest stage:

* ``load``: reading the decoder.  safetensors files are memory-mapped: when the run dtype
  is the file's (bf16), the weights *are* the file's pages; otherwise every page read stays
  resident until loading ends, next to the converted copy.  On-the-fly quantization holds
  one full-precision matrix plus the quantizer's temporaries at a time.
* ``encode``: the streaming encoder: DINOv2 on 16-frame windows, SigLIP and the connector
  on ``encode_chunk`` frames, and its host buffers (decode queue, window, spill reads).
* ``compose``: the connector's ``mm_projector`` over every kept frame (12x12 and 8x8 grids),
  selection and STC, the prompt's input embeddings.
* ``generate``: prefill over the whole context (MLP intermediates dominate), the KV cache
  at full context, the per-step logits.

Notation: L = context (``tokenizer_model_max_length``), H/I = decoder hidden/MLP widths,
C = a tower's width, T = a tower's tokens per frame, N = frames kept after stage 1
(at most ``max_frames_cap``), vh = the connector's width.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import LongVUConfig
from ..errors import CheckpointError, LongVUError
from .presets import TOWERS, preset
from .quantize import BYTES_PER_WEIGHT, quantizes_lm_head

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
GiB = 1024**3


@dataclass(frozen=True)
class Calibration:
    """Constants measured rather than derived (CPU, torch 2.13, transformers 5.24).

    They come from one instrumented run of the 2-layer real-width checkpoint (RSS and its
    anonymous/file parts from ``/proc/self/status`` after each stage) and from the shapes of
    the tensors each stage keeps alive; ``python -m benchmarks.memory`` checks the totals
    they give against whole-process peaks.  Re-measure them when the encoder, torch or
    transformers change what a stage holds.

    Attributes:
        process_bytes: RSS of a ``longvu`` process before any weight is read (Python, torch,
            transformers, PyAV, the tokenizer).
        cuda_context_bytes: what a CUDA process holds beyond its tensors (context, cuBLAS
            workspaces, allocator slack); counted against ``--device-memory``, not in
            ``torch.cuda.max_memory_allocated``.
        quantize_temporaries: full-precision float32 copies the on-the-fly quantizer holds
            while it quantizes one matrix (torchao: the scaled and rounded tensors).
        tower_act_hidden, tower_act_mlp: live ``[n, T, C]`` and ``[n, T, I]`` tensors at a
            tower's peak (residual, normed input, attention output; MLP input and output).
        compose_copies: ``[N, 144, H]``-sized tensors alive while the connector projects and
            unpads every kept frame (projector input/GELU/output, the grid with newlines,
            the 8x8 grid of mixed mode).
        prefill_mlp_copies, prefill_hidden_copies: ``[L, I]`` and ``[L, H]`` tensors alive
            at the prefill peak (gate, up, their product; residual, normed, attention out).
        decode_queue_frames: decoded frames the background decoder may hold ahead of the
            encoder (the queue plus in-flight preprocessing).
        decoder_buffer_bytes: PyAV's own buffers (codec threads, packet queue).
    """

    process_bytes: int = 300 * 1024**2
    cuda_context_bytes: int = 600 * 1024**2
    quantize_temporaries: float = 2.0
    tower_act_hidden: float = 6.0
    tower_act_mlp: float = 2.0
    compose_copies: float = 4.0
    prefill_mlp_copies: float = 3.0
    prefill_hidden_copies: float = 6.0
    decode_queue_frames: int = 48
    decoder_buffer_bytes: int = 64 * 1024**2


# ------------------------------------------------------------------ the model's shapes
@dataclass(frozen=True)
class Shapes:
    """Everything the planner reads from the configs."""

    name: str
    model_type: str
    vocab: int  # rows in the checkpoint
    tokenizer_len: int  # rows after the loader's shrink
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool
    file_dtype: str
    vision_hidden: int
    connector_depth: int
    image_token_len: int
    lowres_token: int
    aux_token_len: int
    context: int
    max_frames_cap: int
    dino_window: int
    encode_chunk: int
    keep_all_below: int  # a short video keeps every frame below this (LongVUConfig.frame_budget)
    siglip: dict[str, Any] = field(default_factory=dict)
    dinov2: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_configs(
        cls, name: str, raw: dict, siglip: dict, dinov2: dict, tokenizer_len: int | None = None,
        overrides: dict | None = None,
    ) -> Shapes:  # fmt: skip

        cfg = LongVUConfig.from_dict(raw)
        if overrides:
            cfg = cfg.with_overrides(overrides)
        h, nh = raw["hidden_size"], raw["num_attention_heads"]
        return cls(
            name=name, model_type=cfg.model_type, vocab=raw["vocab_size"],
            tokenizer_len=tokenizer_len or raw["vocab_size"], hidden=h, intermediate=raw["intermediate_size"],
            layers=raw["num_hidden_layers"], heads=nh, kv_heads=raw.get("num_key_value_heads") or nh,
            head_dim=raw.get("head_dim") or h // nh, tied=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=cfg.model_type == "cambrian_qwen" or bool(raw.get("attention_bias", False)),
            file_dtype=str(raw.get("torch_dtype") or "bfloat16"), vision_hidden=cfg.vision_hidden_size,
            connector_depth=cfg.connector_depth, image_token_len=cfg.image_token_len,
            lowres_token=cfg.lowres_token, aux_token_len=cfg.aux_token_len, context=cfg.tokenizer_model_max_length,
            max_frames_cap=cfg.max_frames_cap, dino_window=cfg.dino_window, encode_chunk=cfg.encode_chunk,
            keep_all_below=cfg.frame_budget(), siglip=siglip.get("vision_config", siglip), dinov2=dinov2,
        )  # fmt: skip


def load_shapes(model: str, overrides: dict | None = None) -> Shapes:
    """A released model's preset (hub id, folder name or ``qwen2-7b`` / ``llama3.2-3b``), or a checkpoint folder."""

    p = preset(model)
    if p is not None:
        return Shapes.from_configs(model, p["config"], TOWERS["siglip"], TOWERS["dinov2"], p["tokenizer_len"],
                                   overrides)  # fmt: skip
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{model}: not a checkpoint folder (no config.json) nor a known model "
            "(Vision-CAIR/LongVU_Qwen2_7B, Vision-CAIR/LongVU_Llama3_2_3B)"
        )
    raw = _read_json(folder / "config.json")
    towers = {k: _read_json(folder / "vision_towers" / k / "config.json", TOWERS[k]) for k in ("siglip", "dinov2")}
    return Shapes.from_configs(str(folder), raw, towers["siglip"], towers["dinov2"], _tokenizer_len(folder),
                               overrides)  # fmt: skip


def _read_json(path: Path, default: dict | None = None) -> dict:

    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if default is not None:
            return default  # a tower given elsewhere (--siglip/--dinov2): assume the released one
        raise CheckpointError(f"{path}: missing") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _tokenizer_len(folder: Path) -> int | None:
    """``len(tokenizer)`` from tokenizer.json without loading it: the largest id + 1."""
    try:
        tok = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return None
    ids = list(tok.get("model", {}).get("vocab", {}).values()) + [t["id"] for t in tok.get("added_tokens", [])]
    return max(ids) + 1 if ids else None


# ------------------------------------------------------------------ parameter counts
def llm_param_counts(s: Shapes) -> dict[str, int]:
    """Decoder parameters by kind: ``linear`` (the quantizable matrices of every layer),
    ``head`` (``lm_head``, 0 when tied), ``embed`` and ``other`` (norms, biases)."""
    h, kv = s.hidden, s.kv_heads * s.head_dim
    q = s.heads * s.head_dim
    per_layer_linear = h * q + 2 * h * kv + q * h + 3 * h * s.intermediate
    per_layer_other = 2 * h + ((q + 2 * kv) if s.qkv_bias else 0)
    return {
        "embed": s.vocab * h,
        "head": 0 if s.tied else s.vocab * h,
        "linear": s.layers * per_layer_linear,
        "other": s.layers * per_layer_other + h,
    }


def siglip_params(c: dict) -> int:
    """SigLIP vision tower (``SiglipVisionModel``: embeddings, encoder, post-LN, pooling head)."""
    d, i, p = c["hidden_size"], c["intermediate_size"], c["patch_size"]
    grid = (c["image_size"] // p) ** 2
    embed = 3 * p * p * d + d + grid * d
    layer = 4 * (d * d + d) + 2 * d * i + i + d + 4 * d
    head = d + 3 * d * d + 3 * d + d * d + d + 2 * d + 2 * d * i + i + d
    return embed + c["num_hidden_layers"] * layer + 2 * d + head


def dinov2_params(c: dict) -> int:
    """DINOv2 (``Dinov2Model``: cls/mask tokens, a 518-px position grid, layer scales, SwiGLU or MLP)."""
    d, p = c["hidden_size"], c["patch_size"]
    grid = (c["image_size"] // p) ** 2 + 1
    embed = 2 * d + grid * d + 3 * p * p * d + d
    hidden = int(d * c.get("mlp_ratio", 4))
    if c.get("use_swiglu_ffn"):
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        mlp = 2 * (d * hidden + hidden) + hidden * d + d
    else:
        mlp = d * hidden + hidden + hidden * d + d
    layer = 4 * d + 4 * (d * d + d) + 2 * d + mlp
    return embed + c["num_hidden_layers"] * layer + 2 * d


def connector_params(s: Shapes) -> int:
    """The SVA connector (``longvu.model.connector.SVAConnector``)."""
    vh, h = s.vision_hidden, s.hidden
    towers = [s.siglip["hidden_size"], s.dinov2["hidden_size"]]
    aux = sum(w * vh + vh + vh * vh + vh + 2 * vh for w in towers)
    cell = (int(math.isqrt(s.aux_token_len)) // int(math.isqrt(s.image_token_len))) ** 2
    ln_lin = 2 * vh + vh * vh
    attn = ln_lin + 2 * len(towers) * ln_lin + vh * vh
    layer = vh * vh + 2 * vh * vh + 2 * vh * vh + 2 * vh + attn + len(towers) * cell * vh
    return aux + s.connector_depth * layer + vh + (vh * h + h + h * h + h) + h


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """What ``longvu ask`` would be run with (the same names as its options)."""

    device: str = "cuda"
    dtype: str = "bfloat16"
    quantize: str | None = None
    vision_device: str | None = None
    vision_dtype: str | None = None
    llm_gpu_memory: int | None = None  # bytes of decoder weights on the GPU; the rest offloaded
    minutes: float = 1.0
    fps: float = 1.0
    frame_size: tuple[int, int] = (640, 360)
    max_new_tokens: int = 512

    @property
    def vdev(self) -> str:
        return self.vision_device or self.device

    @property
    def accelerator(self) -> str:
        """The name the plan gives the GPU's memory: ``"mps"`` (Apple's unified memory) when a part
        runs there, else ``"cuda"`` (0 bytes in a CPU-only plan)."""
        return "mps" if "mps" in (self.device, self.vdev) else "cuda"

    @property
    def vdtype(self) -> str:
        return self.vision_dtype or self.dtype

    def describe(self) -> str:
        parts = [f"--device {self.device} --dtype {self.dtype}"]
        if self.quantize:
            parts.append(f"--quantize {self.quantize}")
        if self.vision_device and self.vision_device != self.device:
            parts.append(f"--vision-device {self.vision_device}")
        if self.vision_dtype and self.vision_dtype != self.dtype:
            parts.append(f"--vision-dtype {self.vision_dtype}")
        if self.llm_gpu_memory is not None:
            parts.append(f"--llm-gpu-memory {self.llm_gpu_memory / GiB:.1f}GB")
        return " ".join(parts)


# ------------------------------------------------------------------ terms (bytes)
def _b(dtype: str) -> int:
    return DTYPE_BYTES[dtype]


def llm_weight_bytes(s: Shapes, st: Settings) -> dict[str, int]:
    """Decoder weights after loading: quantized linear layers (with their per-row or per-block
    scales), the head (quantized on CPU), embeddings and norms in the compute dtype."""
    n, b, q = llm_param_counts(s), _b(st.dtype), st.quantize
    rows = s.layers * (s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + s.hidden + 2 * s.intermediate + s.hidden)
    if q:
        scale = b if st.device == "cpu" else 4  # torchao: one compute-dtype scale per row; bnb int8: fp32
        linear = int(n["linear"] * BYTES_PER_WEIGHT[q]) + (rows * scale if q == "int8" else 0)
    else:
        linear = n["linear"] * b
    head = n["head"] * b
    if n["head"] and quantizes_lm_head(q, st.device):
        head = n["head"] * 1 + s.vocab * b
    return {"linear": linear, "head": head, "embed": n["embed"] * b, "other": n["other"] * b}


def tower_weight_bytes(s: Shapes, st: Settings) -> dict[str, int]:
    vb = _b(st.vdtype)
    return {"siglip": siglip_params(s.siglip) * vb, "dinov2": dinov2_params(s.dinov2) * vb}


def largest_matrix(s: Shapes, st: Settings) -> int:
    """Elements of the largest matrix the quantizer converts at once (the head, else an MLP matrix)."""
    head = 0 if s.tied or not quantizes_lm_head(st.quantize, st.device) else s.vocab * s.hidden
    return max(head, s.hidden * s.intermediate)


def load_terms(s: Shapes, st: Settings, cal: Calibration) -> dict[str, int]:
    """Decoder loading at its fullest moment.

    At the end of loading every checkpoint page read is resident next to the converted
    weights (none when the run dtype is the file's: the weights are the pages).  With
    on-the-fly quantization the fuller moment may come earlier, while the largest matrix is
    quantized: its pages, its copy in the compute dtype (none in the file's dtype) and the
    quantizer's float32 temporaries.
    """
    w = sum(llm_weight_bytes(s, st).values())
    n = llm_param_counts(s)
    file_bytes = (n["embed"] + n["head"] + n["linear"] + n["other"]) * _b(s.file_dtype)
    same = st.device == "cpu" and st.dtype == s.file_dtype and not st.quantize
    end = {"checkpoint pages (memory-mapped)": file_bytes, "decoder weights": 0 if same else w}
    if not st.quantize:
        return end
    big = largest_matrix(s, st)
    if st.device != "cpu":  # bitsandbytes quantizes on the GPU, one full-precision matrix at a time
        return {**end, "matrix being quantized": big * _b(st.dtype)}
    during = {
        "checkpoint pages (memory-mapped)": big * _b(s.file_dtype),
        "decoder weights": big * _b(st.dtype) if st.dtype != s.file_dtype else 0,  # else the pages themselves
        "quantizer temporaries": int(cal.quantize_temporaries * big * 4),
    }
    return during if sum(during.values()) > sum(end.values()) else end


def tower_activation_bytes(s: Shapes, st: Settings, cal: Calibration) -> dict[str, int]:
    """One DINOv2 window (``dino_window`` frames) or one SigLIP chunk (``encode_chunk`` frames)
    in flight: ``n*T*(a*C + b*I)`` elements plus the float32 24x24 resample."""
    vb = _b(st.vdtype)

    def one(c: dict, n: int, mlp: int) -> int:
        t = (378 // c["patch_size"]) ** 2 + 1 if c is s.dinov2 else (c["image_size"] // c["patch_size"]) ** 2
        act = n * t * (cal.tower_act_hidden * c["hidden_size"] + cal.tower_act_mlp * mlp) * vb
        return int(act) + n * s.aux_token_len * c["hidden_size"] * 4

    d = s.dinov2
    dino_mlp = int(d["hidden_size"] * d.get("mlp_ratio", 4))
    if d.get("use_swiglu_ffn"):
        dino_mlp = 2 * ((int(dino_mlp * 2 / 3) + 7) // 8 * 8)
    return {
        "dinov2": one(d, s.dino_window, dino_mlp),
        "siglip": one(s.siglip, s.encode_chunk, s.siglip["intermediate_size"]),
    }


def connector_encode_bytes(s: Shapes, st: Settings) -> int:
    """Connector on one chunk: both towers' features projected to vh, 2x2 cells of keys and values."""
    widths = s.siglip["hidden_size"] + s.dinov2["hidden_size"]
    return s.encode_chunk * s.aux_token_len * (widths + 12 * s.vision_hidden) * _b(st.dtype)


def encoder_host_bytes(s: Shapes, st: Settings, cal: Calibration) -> dict[str, int]:
    """Host RAM of the streaming encoder, independent of the video's length.

    Frames decoded ahead (the queue) and the current 16-frame window each hold an RGB frame
    and its DINOv2 input (3x378x378 float32); two SigLIP chunks (the current one and the
    prefetched next) hold 3x384x384 float32 inputs.  Re-measure when the spill format changes.
    """
    w, h = st.frame_size
    rgb = w * h * 3
    dino_px, sig_px = 3 * 378 * 378 * 4, 3 * 384 * 384 * 4
    return {
        "decode queue": cal.decode_queue_frames * (rgb + dino_px),
        "DINOv2 window": s.dino_window * (rgb + dino_px),
        "SigLIP chunks": 2 * s.encode_chunk * (rgb + sig_px),
        "decoder buffers": cal.decoder_buffer_bytes,
    }


def frames(st: Settings) -> int:
    return max(1, int(st.minutes * 60 * st.fps))


def kept_frames(s: Shapes, st: Settings) -> int:
    """Frames after stage 1, worst case: every sampled frame survives, up to the 400 cap."""
    return min(frames(st), s.max_frames_cap)


def compose_bytes(s: Shapes, st: Settings, cal: Calibration) -> int:
    """``mm_projector`` and unpadding over every kept frame: ``N*144*H`` elements, a few copies."""
    return int(kept_frames(s, st) * s.image_token_len * s.hidden * _b(st.dtype) * cal.compose_copies)


def kv_cache_bytes(s: Shapes, st: Settings) -> int:
    """Keys and values of every layer at full context: ``2 * layers * L * kv_heads * head_dim``."""
    return 2 * s.layers * (s.context + st.max_new_tokens) * s.kv_heads * s.head_dim * _b(st.dtype)


def prefill_bytes(s: Shapes, st: Settings, cal: Calibration) -> int:
    """One layer's prefill over the whole context: ``L * (a*I + b*H)`` elements (SDPA keeps no L x L scores)."""
    return int(s.context * (cal.prefill_mlp_copies * s.intermediate + cal.prefill_hidden_copies * s.hidden)
               * _b(st.dtype))  # fmt: skip


def logits_bytes(s: Shapes, st: Settings) -> int:
    """float32 logits kept for every generated token (the step-0 logits of the trace) plus one step's scores."""
    return s.tokenizer_len * 4 * (st.max_new_tokens + 2)


def feature_cache_bytes(s: Shapes, st: Settings) -> int:
    """One video's feature-cache entry: the connector's ``[K, 144, vh]`` output for every frame a
    question may use (all frames of a short video, else at most the stage-1 cap) plus per-frame data."""
    n = frames(st)
    per_frame = s.image_token_len * s.vision_hidden * _b(st.dtype)
    stored = n if n < s.keep_all_below else min(n, s.max_frames_cap)
    return stored * per_frame + n * (4 + 8 + 8 + 8)


# ------------------------------------------------------------------ the plan
@dataclass
class Plan:
    """Predicted bytes per stage, device and component; ``peak_bytes`` is the largest stage per device."""

    model: str
    settings: Settings
    stages: dict[str, dict[str, dict[str, int]]]  # stage -> device -> component -> bytes
    feature_cache_bytes: int
    frames: int
    kept_frames: int

    @property
    def devices(self) -> tuple[str, str]:
        return self.settings.accelerator, "cpu"

    @property
    def peak_bytes(self) -> dict[str, int]:
        out = dict.fromkeys(self.devices, 0)
        for devices in self.stages.values():
            for dev, parts in devices.items():
                out[dev] = max(out[dev], sum(parts.values()))
        return out

    def peak_stage(self, device: str) -> str:
        return max(self.stages, key=lambda k: sum(self.stages[k].get(device, {}).values()))

    @property
    def unified_peak_bytes(self) -> int:
        """The largest stage's bytes on both devices together: with ``mps`` both come out of the host's
        RAM (memory-mapped checkpoint pages included, which the OS can drop under pressure)."""
        return max(sum(sum(parts.values()) for parts in devices.values()) for devices in self.stages.values())

    def to_dict(self) -> dict[str, Any]:
        st = asdict(self.settings)
        st["frame_size"] = list(self.settings.frame_size)
        out = {
            "model": self.model,
            "settings": st,
            "frames": self.frames,
            "kept_frames_max": self.kept_frames,
            "peak_bytes": self.peak_bytes,
            "peak_stage": {d: self.peak_stage(d) for d in self.devices},
            "stages": self.stages,
            "feature_cache_bytes": self.feature_cache_bytes,
        }
        if self.settings.accelerator == "mps":
            out["unified_memory_peak_bytes"] = self.unified_peak_bytes  # mps and cpu share the host's RAM
        return out


def plan(shapes: Shapes, st: Settings, cal: Calibration | None = None) -> Plan:
    """Predict a run's memory (see the module docstring for the stages)."""
    cal = cal or Calibration()
    acc = st.accelerator
    llm_dev = "cpu" if st.device == "cpu" else acc
    vis_dev = "cpu" if st.vdev == "cpu" else acc
    stages: dict[str, dict[str, dict[str, int]]] = {}

    def put(stage: str, dev: str, name: str, nbytes: int) -> None:
        stages.setdefault(stage, {acc: {}, "cpu": {}})[dev][name] = int(nbytes)

    w = llm_weight_bytes(shapes, st)
    llm_w = sum(w.values())
    conn_w = connector_params(shapes) * _b(st.dtype)
    towers_w = tower_weight_bytes(shapes, st)
    offloaded = 0
    if st.llm_gpu_memory is not None and llm_dev == "cuda":
        offloaded = max(0, llm_w - st.llm_gpu_memory)
    resident = {"decoder weights": llm_w - offloaded, "connector weights": conn_w}
    for stage in ("load", "encode", "compose", "generate"):
        put(stage, "cpu", "process (Python, torch, libraries)", cal.process_bytes)
        if stage != "load":  # the connector is read after the decoder's pages are released
            for name, v in resident.items():
                put(stage, llm_dev, name, v)
        if offloaded:
            put(stage, "cpu", "offloaded decoder layers", offloaded)
    for name, v in load_terms(shapes, st, cal).items():
        put("load", "cpu" if "pages" in name else llm_dev, name, v)
    if llm_dev == "cuda" and offloaded:
        put("load", "cuda", "decoder weights", llm_w - offloaded)
        put("load", "cpu", "offloaded decoder layers", offloaded)
    for stage in ("encode", "compose", "generate"):
        for name, v in towers_w.items():
            put(stage, vis_dev, f"{name} weights", v)
    act = tower_activation_bytes(shapes, st, cal)
    put("encode", vis_dev, "tower activations (largest pass)", max(act.values()))
    put("encode", llm_dev, "connector activations (one chunk)", connector_encode_bytes(shapes, st))
    for name, v in encoder_host_bytes(shapes, st, cal).items():
        put("encode", "cpu", f"encoder host: {name}", v)
    embeds = shapes.context * shapes.hidden * _b(st.dtype)
    put("compose", llm_dev, "connector over kept frames", compose_bytes(shapes, st, cal))
    put("compose", llm_dev, "input embeddings", embeds)
    put("generate", llm_dev, "input embeddings", embeds)
    put("generate", llm_dev, "KV cache (full context)", kv_cache_bytes(shapes, st))
    put("generate", llm_dev, "prefill workspace", prefill_bytes(shapes, st, cal))
    put("generate", llm_dev, "logits", logits_bytes(shapes, st))
    return Plan(shapes.name, st, stages, feature_cache_bytes(shapes, st), frames(st), kept_frames(shapes, st))


def device_need(p: Plan, cal: Calibration | None = None) -> int:
    """Bytes of device memory a plan needs: the GPU peak plus the CUDA context, the ``mps`` peak (the
    GPU's share of the host's unified memory; there is no separate context to count), or the CPU peak."""
    cal = cal or Calibration()
    if p.settings.accelerator == "mps":
        return p.peak_bytes["mps"]
    if p.settings.device == "cpu":
        return p.peak_bytes["cpu"]
    return p.peak_bytes["cuda"] + cal.cuda_context_bytes


def candidates(st: Settings) -> list[Settings]:
    """Settings to try, best quality (then speed) first."""
    if st.device == "cpu":
        return [replace(st, dtype=d, quantize=q) for d, q in
                (("float32", None), ("bfloat16", None), ("float32", "int8"), ("bfloat16", "int8"))]  # fmt: skip
    if st.device == "mps":  # no quantization library runs on mps
        return [st, replace(st, dtype="float16")] if st.dtype == "float32" else [st]
    out = [replace(st, quantize=q) for q in (None, "int8", "nf4")]
    out += [replace(st, quantize=q, vision_device="cpu", vision_dtype="float32") for q in (None, "int8", "nf4")]
    return out


def fit(shapes: Shapes, st: Settings, device_memory: int, cal: Calibration | None = None) -> dict[str, Any]:
    """The first candidate (see :func:`candidates`) that fits ``device_memory``, or why none does.

    When none fits whole, decoder layers are offloaded to CPU RAM (slow: every token reads
    them over PCIe) with the smallest quantized settings, if the rest fits.
    """
    cal = cal or Calibration()
    tried = []
    for c in candidates(st):
        p = plan(shapes, c, cal)
        need = device_need(p, cal)
        tried.append({"settings": c.describe(), "need_bytes": need, "fits": need <= device_memory})
        if need <= device_memory:
            return {"fits": True, "settings": c.describe(), "plan": p, "tried": tried}
    if st.device == "cuda":
        base = replace(candidates(st)[-1])
        p0 = plan(shapes, replace(base, llm_gpu_memory=0), cal)
        room = device_memory - device_need(p0, cal)
        if room > 0:
            c = replace(base, llm_gpu_memory=room)
            p = plan(shapes, c, cal)
            tried.append({"settings": c.describe(), "need_bytes": device_need(p, cal), "fits": True})
            return {"fits": True, "settings": c.describe(), "plan": p, "tried": tried, "offload": True}
    smallest = min(tried, key=lambda t: t["need_bytes"])
    why = (
        f"nothing fits in {device_memory / GiB:.1f} GiB: the smallest setting ({smallest['settings']}) "
        f"needs {smallest['need_bytes'] / GiB:.1f} GiB"
    )
    return {"fits": False, "why": why, "tried": tried}


def parse_size(text: str) -> int:
    """``24GB``, ``24G``, ``24GiB``, ``1.5TB``, ``512MB`` or a plain number of GB -> bytes (binary units)."""

    t = text.strip().upper().replace("IB", "B")
    units = {"TB": 1024**4, "T": 1024**4, "GB": GiB, "G": GiB, "MB": 1024**2, "M": 1024**2}
    for suffix, mult in units.items():
        if t.endswith(suffix):
            t, scale = t[: -len(suffix)], mult
            break
    else:
        scale = GiB
    try:
        value = float(t)
    except ValueError:
        raise LongVUError(f"cannot read the size {text!r} (e.g. 24GB, 512MB)") from None
    if not value > 0 or math.isinf(value):
        raise LongVUError(f"a size must be positive, got {text!r}")
    return int(value * scale)
