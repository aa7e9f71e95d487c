"""A lint for device bugs that a CPU-only test run cannot see.

Over the modules that handle model tensors:

* every tensor factory (``torch.zeros``, ``torch.tensor``, ``torch.arange``, ...) passes
  ``device=`` or is moved in the same expression (``torch.ones(3).to(x.device)``):
  a factory without one makes a host tensor, and mixing it with device tensors fails
  on CUDA and MPS;
* ``.double()``, ``float64`` and ``.numpy()`` apply only to host tensors: the receiver
  went through ``.cpu()`` (or :func:`longvu.model.observe.host64`), in the same expression or
  in the assignment of the name it starts from.  MPS has no float64, ``.numpy()`` of a
  device tensor fails, and a float64 copy on a GPU wastes its memory.

``torch.from_numpy`` is not a factory here: it wraps host memory, and what happens to
its result next is the virtual device test's business (``test_virtual_device.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "longvu"
FILES = sorted(
    [*(SRC / "model" / "compress").glob("*.py")]
    + [
        SRC / f
        for f in (
            "model/compose.py",
            "pipeline/api.py",
            "model/encode.py",
            "model/connector.py",
            "model/observe.py",
            "pipeline/trace.py",
            "model/generation.py",
            "model/towers.py",
        )
    ]  # fmt: skip
)
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "linspace", "logspace", "eye",
             "rand", "randn", "randint", "randperm", "empty_strided", "range", "tril_indices", "triu_indices",
             "LongTensor", "FloatTensor", "BoolTensor", "IntTensor", "ByteTensor", "DoubleTensor"}  # fmt: skip
HOST_CALLS = {"cpu", "numpy", "host64", "from_numpy", "asarray", "array"}
MOVES = {"to", "cuda"}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _is_torch_attr(node: ast.AST, names: set[str]) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr in names and isinstance(node.value, ast.Name)
            and node.value.id == "torch")  # fmt: skip


def _chain(node: ast.AST):
    """The receiver chain of an expression: ``a.b().c[0].d()`` -> d(), c[0], c, b(), a.b, a."""
    while True:
        yield node
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        else:
            return


def _is_host(expr: ast.AST, host_names: set[str]) -> bool:
    for n in _chain(expr):
        if isinstance(n, ast.Call) and (_call_name(n) in HOST_CALLS or (_is_torch_attr(n.func, FACTORIES)
                                                                         and _literal_cpu(n))):  # fmt: skip
            return True
        if isinstance(n, ast.Name) and (n.id in host_names or n.id in ("np", "numpy")):
            return True
        if isinstance(n, ast.BinOp):  # (h ** 2).sum(): an operand on the host puts the result there
            return _is_host(n.left, host_names) or _is_host(n.right, host_names)
    return False


def _host_names(func: ast.AST) -> set[str]:
    """Names assigned (anywhere in ``func``) from host expressions (``a, b = x.cpu(), y.cpu()`` too)."""
    names: set[str] = set()
    for node in ast.walk(func):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            names.update(t.id for t, v in pairs if isinstance(t, ast.Name) and _is_host(v, names))
    return names


def _moved_at_once(node: ast.AST, parents: dict) -> bool:
    """Whether ``node`` sits in the receiver of a ``.to(...)`` / ``.cuda()`` call in the same statement,
    or is a module's initial parameter value (``nn.Parameter(torch.zeros(...))``: it moves with the module)."""
    child, p = node, parents.get(node)
    while p is not None and not isinstance(p, ast.stmt):
        if (
            isinstance(p, ast.Attribute)
            and p.attr in MOVES
            and p.value is child
            and isinstance(parents.get(p), ast.Call)
        ):
            return True
        if isinstance(p, ast.Call) and _call_name(p) == "Parameter":
            return True
        child, p = p, parents.get(p)
    return False


def _enclosing_function(node: ast.AST, parents: dict) -> ast.AST:
    p = parents.get(node)
    while p is not None and not isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
        p = parents.get(p)
    return p


def _literal_cpu(call: ast.Call) -> bool:
    return any(
        k.arg == "device" and isinstance(k.value, ast.Constant) and k.value.value == "cpu" for k in call.keywords
    )


def lint(source: str, filename: str = "<src>") -> list[str]:
    """Every device hazard in ``source``, as ``file:line: what``."""
    tree = ast.parse(source)
    parents = _parents(tree)
    hosts: dict[ast.AST, set[str]] = {}
    problems = []

    def host(expr: ast.AST) -> bool:
        fn = _enclosing_function(expr, parents)
        if fn not in hosts:
            hosts[fn] = _host_names(fn)
        return _is_host(expr, hosts[fn])

    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and _is_torch_attr(node.func, FACTORIES):
            if not any(k.arg == "device" for k in node.keywords) and not _moved_at_once(node, parents):
                problems.append(f"{where}: torch.{node.func.attr}(...) without device= (a host tensor)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("double", "numpy") and not host(node.func.value):
                problems.append(f"{where}: .{node.func.attr}() of a tensor that did not go through .cpu()")
        if _is_torch_attr(node, {"float64", "double"}):
            call = parents.get(node)
            while call is not None and not isinstance(call, ast.Call):
                call = parents.get(call)
            ok = call is not None and (
                (isinstance(call.func, ast.Attribute) and call.func.attr in ("to", "type") and host(call.func.value))
                or (_is_torch_attr(call.func, FACTORIES) and _literal_cpu(call))
            )
            if not ok:
                problems.append(f"{where}: float64 outside the host")
    return problems


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SRC)) for p in FILES])
def test_no_device_hazards(path):
    assert lint(path.read_text(), str(path.relative_to(SRC))) == []


@pytest.mark.parametrize(
    "code, found",
    [
        ("m = torch.ones(3, dtype=torch.bool)", 1),
        ("m = torch.ones(3, dtype=torch.bool, device=x.device)", 0),
        ("m = torch.cat([torch.ones(3)] * 2).to(x.device)", 0),
        ("m = torch.ones(3).to(x.device) + torch.zeros(3)", 1),
        ("i = x[torch.tensor([0, 2])]", 1),
        ("y = x.double().cpu()", 1),
        ("y = x.detach().cpu().double()", 0),
        ("def f(x):\n    h = host64(x)\n    return h[0].float().numpy()", 0),
        ("def f(x):\n    h = x.float()\n    return h.numpy()", 1),
        ("p = nn.Parameter(torch.zeros(3, 4))", 0),
        ("def f(x):\n    a, b = x.cpu(), x.float()\n    return a.numpy(), b.numpy()", 1),
        ("y = x.to(torch.float64)", 1),
        ("y = x.cpu().to(torch.float64)", 0),
        ("t = torch.tensor([1.0], dtype=torch.float64, device='cpu')", 0),
        ("t = torch.tensor([1.0], dtype=torch.float64, device=x.device)", 1),
    ],
)
def test_lint_rules(code, found):
    assert len(lint(code)) == found, lint(code)
