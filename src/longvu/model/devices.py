"""Where work runs: host<->device copies, CPU budgets, float32 precision, worker placement.

Model glue shared by the encoder, the towers, the model loader and the eval runner:

* :func:`pick_device`, :func:`pick_dtype` - ``--device``/``--dtype`` resolved, an absent device refused
  (torch only, so the CLI can refuse before loading);
* :func:`upload` - a host tensor to the model's device: pinned, non-blocking copies to
  CUDA, the cast to the model's dtype done on the device;
* :func:`host_batch` - frames stacked into one host tensor (page-locked for CUDA);
* :func:`cpu_budget`, :func:`preprocess_workers` - how many cores this process may use
  (its CPU affinity, not the machine's core count) and how many of them preprocess frames;
* :func:`configure_precision` - float32 means float32 on CUDA (no TF32);
* :func:`bicubic_on_host` - MPS before torch 2.6 has no bicubic ``interpolate``;
* :func:`worker_threads`, :func:`ray_cpus_per_gpu` - one GPU and a fair
  share of the cores per evaluation worker.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import CheckpointError

MAX_PREPROCESS_WORKERS = 32  # preprocessing threads at most: enough to feed one GPU from a big host


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise CheckpointError(f"unknown device {device!r} (use auto, cpu, cuda or mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"--device {device}: no CUDA GPU is available here (use --device cpu or auto)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CheckpointError("--device mps: MPS is not available here (use --device cpu or auto)")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise CheckpointError(f"unknown dtype {dtype!r} (use auto, float32, float16 or bfloat16)")
    return table[dtype]


def upload(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` (and in ``dtype``).

    To CUDA the copy is asynchronous (from page-locked memory when ``t`` is pinned, see
    :func:`host_batch`) and the dtype cast runs on the device, after the copy: a float32
    frame batch crosses the bus once and the GPU halves it to bf16.  Elsewhere it is a
    plain ``.to``.
    """
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t if dtype is None else t.to(dtype)


def host_batch(arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """``[n, ...]`` host tensor of same-shaped arrays; page-locked when it goes to CUDA.

    Stacking straight into pinned memory saves the copy that ``pin_memory()`` would make.
    """
    first = arrays[0]
    shape = (len(arrays), *first.shape)
    pin = device.type == "cuda" and torch.cuda.is_available()
    out = torch.empty(shape, dtype=torch.from_numpy(first[:0]).dtype, device="cpu", pin_memory=pin)
    np.stack(arrays, out=out.numpy())
    return out


def cpu_budget() -> int:
    """Cores this process may run on (its affinity mask: what a container or ``taskset`` allows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def preprocess_workers(device: torch.device) -> int:
    """Threads that decode-side preprocessing (pad, resize, normalise) may use.

    On the CPU the model's own forward passes use ``torch.get_num_threads()`` cores and
    preprocessing shares them; on an accelerator every allowed core can preprocess.
    """
    cores = cpu_budget()
    if device.type == "cpu":
        cores = min(cores, torch.get_num_threads())
    return max(1, min(cores, MAX_PREPROCESS_WORKERS))


def decode_threads(device: torch.device) -> str:
    """PyAV's ``thread_type`` for decoding.

    With the model on the CPU the encoder keeps every core busy and frame threading costs
    more than it gains (measured on 2 cores); with the model elsewhere the cores are free
    and frame threading (``AUTO``) decodes several frames at once.
    """
    return "SLICE" if device.type == "cpu" else "AUTO"


def configure_precision(device: torch.device, dtype: torch.dtype) -> None:
    """float32 on CUDA means IEEE float32: TF32 off for matmuls and convolutions.

    PyTorch lets cuDNN convolutions use TF32 by default, which shifts the vision towers'
    patch embeddings by about 1e-3.  These are process-wide flags: set when a float32
    model is loaded onto a CUDA device, left as they are otherwise (a bf16/fp16 model does
    not use them); set them again after loading to trade exactness for speed.
    """
    if device.type == "cuda" and dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def bicubic_on_host(device: torch.device, version: str | None = None) -> bool:
    """Whether bicubic ``F.interpolate`` must run on the host: MPS before torch 2.6 lacks it."""
    if device.type != "mps":
        return False
    major, minor = (int(x) for x in (version or torch.__version__).split("+")[0].split(".")[:2])
    return (major, minor) < (2, 6)


def worker_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads per evaluation worker: an equal share of this process's cores."""
    return max(1, (cores or cpu_budget()) // max(1, workers))


def ray_cpus_per_gpu(nodes: list[dict]) -> int:
    """CPUs to ask for with each one-GPU Ray actor: the smallest per-GPU share of a GPU node's CPUs.

    Args:
        nodes: ``ray.nodes()``: dicts with ``Alive`` and ``Resources`` (``CPU``, ``GPU``).
    """
    shares = [
        int(n["Resources"].get("CPU", 1) // n["Resources"]["GPU"])
        for n in nodes
        if n.get("Alive", True) and n.get("Resources", {}).get("GPU", 0) >= 1
    ]
    return max(1, min(shares)) if shares else 1
