"""A virtual accelerator for CPU test runs: catches device bugs without a GPU.

On a CPU-only machine every tensor lives on the host, so code that mixes host and
device tensors, makes float64 copies of device tensors (MPS has none) or reads a
device tensor into numpy without ``.cpu()`` runs fine here and crashes on the first
CUDA or MPS run.  :class:`VirtualDevice`, a ``TorchFunctionMode``, replays the device
rules on the CPU.  It marks the tensors that would live on the accelerator:

* the model's parameters and buffers (:meth:`VirtualDevice.mark_module`);
* what ``.to(device)`` / ``.cuda()`` returns (an upload; the device given as a
  ``torch.device``, e.g. ``model.device``);
* what a factory makes with a ``device=`` argument other than the literal ``"cpu"``;
* the outputs of any op with a marked input.

``.cpu()`` and ``.to("cpu")`` (the literal) return unmarked host tensors.  It records:

* a *violation* for an op that mixes marked tensors with unmarked non-scalar ones
  ("Expected all tensors to be on the same device"), a marked float64 tensor, or
  ``.numpy()`` / ``__array__`` of a marked tensor;
* a *sync* for each read of a marked tensor by the host (``.item()``, ``.tolist()``,
  ``.cpu()``, ``bool()``/``int()``/``float()``, and ops whose output size depends on
  the data: ``nonzero``, one-argument ``where``, boolean indexing, ...), with the
  innermost ``longvu`` function that caused it;
* an *upload* for each ``.to(device)`` of an unmarked tensor (its bytes).

The mode is thread-local, as all torch function modes are: enter :meth:`child` on
other threads (e.g. generation's) to extend the same record to them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

import longvu

MARK = "_longvu_on_device"
TORCH_DIR = os.path.dirname(torch.__file__)
HERE = os.path.abspath(__file__)
SRC_DIR = os.path.dirname(os.path.abspath(longvu.__file__)) + os.sep

SYNC_METHODS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu"}
DATA_DEPENDENT = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "nonzero_static"}
NO_MIX_CHECK = {"to", "cpu", "cuda", "copy_", "__get__", "__repr__", "__format__", "__str__", "__len__", "size",
                "dim", "numel", "is_contiguous", "stride", "data_ptr", "element_size"}  # fmt: skip


def marked(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, MARK, False)


def _set(t: torch.Tensor, on: bool) -> None:
    try:
        setattr(t, MARK, on)
    except (AttributeError, RuntimeError):  # a few C-level tensors take no attributes
        pass


@dataclass
class Record:
    """What a run did on the virtual device."""

    violations: list[str] = field(default_factory=list)
    syncs: Counter = field(default_factory=Counter)  # "file:function" of the longvu caller -> count
    uploads: list[tuple[str, int]] = field(default_factory=list)  # (caller, bytes)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sync_count(self, *, exclude: tuple[str, ...] = ()) -> int:
        return sum(n for k, n in self.syncs.items() if not k.startswith(exclude))


class VirtualDevice(TorchFunctionMode):
    """See the module docstring.  ``with VirtualDevice() as vd: ...``; then read ``vd.record``."""

    def __init__(self, record: Record | None = None) -> None:
        super().__init__()
        self.record = record or Record()

    def child(self) -> VirtualDevice:
        """A mode for another thread, writing to the same record."""
        return VirtualDevice(self.record)

    @staticmethod
    def mark_module(module: torch.nn.Module) -> None:
        for t in list(module.parameters()) + list(module.buffers()):
            _set(t, True)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # properties (.shape, .T, .device, ...): marks follow self
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and args and marked(args[0]) and not marked(out):
                _set(out, True)
            return out
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        any_marked = any(marked(t) for t in inputs)
        if any_marked:
            self._check_host_reads(func, name, args)
            if name not in NO_MIX_CHECK and any(not marked(t) and t.dim() > 0 for t in inputs):
                shapes = [(tuple(t.shape), "device" if marked(t) else "host") for t in inputs]
                self._violation(f"{name} mixes device and host tensors {shapes}")
        out = func(*args, **kwargs)
        out_mark = self._output_mark(name, args, kwargs, any_marked)
        if name.endswith("_") and not name.startswith("_") and args and out is args[0]:
            out_mark = marked(args[0])  # in place: the tensor stays where it is
        if name in ("to", "cpu", "cuda") and args and out is args[0] and out_mark != marked(out):
            out = out.view_as(out)  # a new object, so that host and device copies carry their own marks
        if out_mark is not None:
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    _set(t, out_mark)
                    if out_mark and t.dtype == torch.float64:
                        self._violation(f"{name} makes a float64 tensor on the device (MPS has no float64)")
        if name == "to" and out_mark and args and not marked(args[0]):
            with self.record.lock:
                self.record.uploads.append((_caller(), args[0].numel() * args[0].element_size()))
        return out

    def _check_host_reads(self, func, name: str, args) -> None:
        self_marked = bool(args) and marked(args[0])
        if name in ("numpy", "__array__") and self_marked:
            self._violation(f".{name}() of a device tensor (needs .cpu() first)")
        elif self_marked and (name in SYNC_METHODS or name in DATA_DEPENDENT or _host_to(name, args)):
            self._sync()
        elif name == "where" and len(args) == 1:
            self._sync()
        elif name == "__getitem__" and self_marked and _bool_index(args[1] if len(args) > 1 else None):
            self._sync()
        elif name == "repeat_interleave" and len(args) > 1 and isinstance(args[1], torch.Tensor):
            self._sync()

    @staticmethod
    def _output_mark(name: str, args, kwargs, any_marked: bool) -> bool | None:
        """Whether outputs live on the device; None leaves them as they are (no tensor made)."""
        if name == "cpu":
            return False
        if name == "cuda":
            return True
        if name in ("to", "new_tensor", "new_zeros", "new_ones", "new_empty", "new_full") or "device" in kwargs:
            dev = _device_arg(name, args, kwargs)
            if dev is not None:
                return dev
        return any_marked

    def _violation(self, what: str) -> None:
        with self.record.lock:
            self.record.violations.append(f"{what} at {_caller(full=True)}")

    def _sync(self) -> None:
        with self.record.lock:
            self.record.syncs[_caller()] += 1


def _device_arg(name: str, args, kwargs) -> bool | None:
    """For ``.to`` and factories: True (device), False (host) or None (no device given)."""
    dev = kwargs.get("device")
    if name == "to" and dev is None:
        for a in args[1:]:
            if isinstance(a, (str, torch.device)):
                dev = a
                break
            if isinstance(a, torch.Tensor):
                return marked(a)
    if dev is None:
        return None
    return not (isinstance(dev, str) and dev == "cpu")


def _host_to(name: str, args) -> bool:
    return name == "to" and _device_arg(name, args, {}) is False


def _bool_index(index) -> bool:
    leaves = pytree.tree_leaves(index) if isinstance(index, (tuple, list)) else [index]
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in leaves)


def _caller(full: bool = False) -> str:
    """``file:function`` of the innermost longvu frame (or the innermost non-torch frame)."""
    f = sys._getframe(2)
    first = None
    while f is not None:
        fn = f.f_code.co_filename
        if not fn.startswith(TORCH_DIR) and os.path.abspath(fn) != HERE:
            first = first or f
            if fn.startswith(SRC_DIR):
                break
        f = f.f_back
    f = f or first
    if f is None:
        return "?"
    where = f"{os.path.basename(f.f_code.co_filename)}:{f.f_code.co_name}"
    if full:
        inner = first if first is not None else f
        return f"{where} line {f.f_lineno} (innermost: {inner.f_code.co_filename}:{inner.f_lineno})"
    return where
