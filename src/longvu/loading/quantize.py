"""Weight quantization of the decoder, through transformers' quantizers (nothing hand-rolled).

``--quantize`` picks a scheme; the library depends on the device:

=========  ==============================================  ==========================================
scheme     CUDA                                            CPU
=========  ==============================================  ==========================================
``int8``   bitsandbytes LLM.int8 (``load_in_8bit``)        torchao int8 weight-only, per output row
``nf4``    bitsandbytes 4-bit NormalFloat, double quant    not available (bitsandbytes needs CUDA)
``int4``   bitsandbytes 4-bit FP4                          not available (torchao's int4 CPU kernels
                                                           are not in its CPU wheels)
=========  ==============================================  ==========================================

Every ``nn.Linear`` of the decoder is quantized as it is read from the checkpoint, so the
full-precision weights never sit in memory all at once.  On CPU the output head
(``lm_head``, 545M parameters for Qwen2-7B) is quantized too; bitsandbytes keeps it in
the compute dtype, as transformers does by default.  Embeddings and norms stay as they are.

``longvu.loading.plan`` uses :data:`BYTES_PER_WEIGHT` and :func:`quantizes_lm_head` to predict the
result, so the two must describe the same thing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import LongVUError, install_hint

if TYPE_CHECKING:  # not at run time: the planner and the CLI's checks use this module without torch
    # lazy: torch only on this path (the module imports without it)
    import torch

SCHEMES = ("int8", "nf4", "int4")

# Bytes per quantized weight element, scales included (the planner's numbers):
#   torchao int8 weight-only: 1 byte + one scale (compute dtype) per output row, counted per row;
#   bitsandbytes int8: 1 byte + one float32 scale per output row;
#   bitsandbytes 4-bit: half a byte + one absmax per 64 weights (8-bit with double quantization, else float32).
BYTES_PER_WEIGHT = {"int8": 1.0, "nf4": 0.5 + 1 / 64, "int4": 0.5 + 4 / 64}


class QuantizeError(LongVUError):
    """A quantization scheme that cannot run with the chosen device, or whose library is missing."""


@contextmanager
def quiet_quantizers() -> Iterator[None]:
    """Inside the block, torchao's import-time notes about missing CUDA kernels stay silent (a CPU run
    does not need them); the loggers' levels are restored after it."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantizes_lm_head(scheme: str | None, device_type: str) -> bool:
    return scheme is not None and device_type == "cpu"


def check_scheme(scheme: str | None, device_type: str) -> None:
    """Raise a one-line :class:`QuantizeError` for a scheme the device cannot run."""
    if scheme is None:
        return
    if scheme not in SCHEMES:
        raise QuantizeError(f"unknown --quantize {scheme!r} (use {', '.join(SCHEMES)})")
    if device_type == "cpu" and scheme != "int8":
        raise QuantizeError(f"--quantize {scheme} needs a CUDA GPU (bitsandbytes); on CPU use --quantize int8")
    if device_type not in ("cpu", "cuda"):
        raise QuantizeError(f"--quantize is not supported on {device_type} (use cuda or cpu)")


def quantization_config(scheme: str | None, device: torch.device, dtype: torch.dtype):
    """The transformers ``quantization_config`` for ``scheme`` on ``device`` (None: no quantization)."""
    check_scheme(scheme, device.type)
    if scheme is None:
        return None
    if device.type == "cpu":
        try:
            with quiet_quantizers():
                # lazy: torchao comes with the quant extra
                from torchao.quantization import Int8WeightOnlyConfig

                # lazy: transformers only on this path (the module imports without it)
                from transformers import TorchAoConfig
        except ImportError:
            raise QuantizeError(f"--quantize int8 on CPU needs torchao: {install_hint('quant')}") from None
        # modules_to_not_convert=[]: no default skips, so lm_head is quantized as well.
        return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=[])
    try:
        # lazy: bitsandbytes comes with the quant extra
        import bitsandbytes  # noqa: F401

        # lazy: transformers only on this path (the module imports without it)
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise QuantizeError(f"--quantize {scheme} on CUDA needs bitsandbytes: {install_hint('quant')}") from None
    if scheme == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4" if scheme == "nf4" else "fp4",
        bnb_4bit_use_double_quant=scheme == "nf4",
        bnb_4bit_compute_dtype=dtype,
    )


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters, quantized tensors counted by their parts.

    A parameter shared by two modules (tied embeddings) or a view of another's storage
    (the shrunk vocabulary) is counted once, by storage.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in module.parameters():
        for part in _tensor_parts(t):
            if part.device.type == "meta":
                continue
            st = part.untyped_storage()
            key = (st.data_ptr(), st.nbytes())
            if key not in seen:
                seen.add(key)
                total += st.nbytes()
    return total


def _tensor_parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors behind ``t`` (a torchao tensor subclass keeps its data in attributes)."""
    # lazy: torch only on this path (the module imports without it)
    import torch

    names = getattr(t, "tensor_data_names", None)
    if names is None and hasattr(t, "__tensor_flatten__") and type(t) is not torch.nn.Parameter:
        names = t.__tensor_flatten__()[0]
    if not names:
        data = t.data if isinstance(t, torch.nn.Parameter) else t
        if data is not t and hasattr(data, "__tensor_flatten__") and type(data) is not torch.Tensor:
            return _tensor_parts(data)
        return [data]
    out = []
    for n in names:
        out += _tensor_parts(getattr(t, n))
    return out
