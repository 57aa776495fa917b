"""A "foreign device" for the CPU: tensors that behave like a GPU's for device placement.

A CPU-only torch has no CUDA device, and the ``meta`` device has no data (``.item()`` and
data-dependent code fail) and lets some mixes through (``meta @ cpu`` is meta). Here a
``ForeignTensor`` is a wrapper subclass that claims ``device="meta"`` (in a CPU build the
one non-CPU device type with a device guard, so autograd runs) and holds a real CPU tensor
that every operation is computed on, so results equal the CPU's. Under ``foreign_device()``
(a dispatch mode, plus a function mode for ``torch.tensor(data, device=...)``):

* an operation that mixes a foreign tensor with a plain CPU tensor raises ``MixedDevices``
  naming the operation, the line that called it and the innermost fairseq_awd line, where
  CUDA raises "Expected all tensors to be on the same device"; what CUDA allows passes:
  0-dim CPU tensors in pointwise and ``_foreach_`` operations, CPU index tensors in
  ``index``/``index_put_``, ``copy_`` and ``.to()`` across devices;
* a factory given ``device="meta"`` (``torch.zeros(n, device=x.device)``, ``x.new_ones``,
  ``torch.zeros_like(x)``, ``torch.tensor(data, device=x.device)``, ``t.to(x.device)``)
  makes a foreign tensor; one given no device makes a plain CPU tensor, and meeting it later
  is caught; so is drawing random numbers for the device from a CPU ``torch.Generator``;
* ``.item()``, ``.tolist()``, ``bool()``, ``float()`` work (CUDA synchronizes and allows
  them), ``.cpu()`` and ``.to("cpu")`` return plain CPU tensors, ``.numpy()`` fails as on
  CUDA; ``is_meta`` is False (torch's ``load_state_dict`` would skip meta parameters);
* with ``check_dtypes=True``, an operation that mixes floating dtypes (other than with a
  0-dim tensor) raises ``MixedDtypes``: a tensor made in the default fp32 meeting a model in
  bf16 or fp64. torch promotes such mixes silently on every device; the check flags them.

Everything that makes tensors for the model must run inside ``foreign_device()``: outside
it a ``device="meta"`` factory makes a real meta tensor, without data, and the first
operation under the mode that meets one raises. ``to_foreign_device(module)`` replaces the
parameters (``.to("cuda")`` keeps the objects): build optimizers after it.

Model code that branches on ``x.is_cuda`` takes its non-CUDA branch here (``is_cuda`` is
False, ``device.type`` is ``"meta"``): such branches are not exercised.
"""

import contextlib
import sys

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

FOREIGN = torch.device("meta")
aten = torch.ops.aten
# What CUDA accepts from the CPU besides 0-dim tensors in pointwise operations.
CROSS_DEVICE_OPS = {aten.copy_.default, aten._to_copy.default, aten.copy.default}
CPU_INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
                 aten._index_put_impl_.default}
SCALAR_OPS = {aten.where.self, aten.masked_fill.Tensor, aten.masked_fill_.Tensor}


class MixedDevices(RuntimeError):
    """An operation met a foreign ("GPU") tensor and a CPU tensor that CUDA would refuse."""


class MixedDtypes(RuntimeError):
    """An operation mixed floating dtypes (``check_dtypes=True``)."""


def caller() -> str:
    """Where the operation was called from: the innermost frame outside torch and this file,
    and the innermost fairseq_awd frame if that is another one."""
    here = __file__.replace("\\", "/")
    frame, first, plugin = sys._getframe(1), None, None
    while frame is not None and plugin is None:
        name = frame.f_code.co_filename.replace("\\", "/")
        where = f"{name}:{frame.f_lineno} ({frame.f_code.co_name})"
        if "/torch/" not in name and name != here:
            first = first or where
            if "/fairseq_awd/" in name and "/tests/" not in name:
                plugin = where
        frame = frame.f_back
    if plugin is None or plugin == first:
        return first or "?"
    return f"{first}, in fairseq_awd from {plugin}"


class ForeignTensor(torch.Tensor):
    """A tensor "on the GPU" (``device="meta"``) computed on the CPU tensor ``inner``."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor, requires_grad: bool = False):
        assert type(inner) is torch.Tensor and inner.device.type == "cpu", type(inner)
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.size(), strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, layout=inner.layout, device=FOREIGN, requires_grad=requires_grad)
        out.inner = inner
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl
    # torch's Python code skips meta tensors in places (load_state_dict copies nothing into
    # them): these are not meta tensors but stand-ins for CUDA ones
    is_meta = False

    def __repr__(self) -> str:
        return f"ForeignTensor({self.inner!r})"

    def tolist(self):  # CUDA copies to the host
        return self.inner.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert a tensor on the model's device (cuda) to numpy: use "
                        f"Tensor.cpu() first; called from {caller()}")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


_active = []  # the check_dtypes flag of each active foreign_device(), innermost last


def _run(func, args, kwargs):
    """``func`` on the inner CPU tensors; outputs foreign where CUDA's would be on the GPU."""
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    foreign = [t for t in tensors if isinstance(t, ForeignTensor)]
    device = kwargs.get("device")
    to_foreign = device is not None and torch.device(device) == FOREIGN
    if to_foreign:
        kwargs = dict(kwargs, device=torch.device("cpu"))
    if any(t.device.type == "meta" and not isinstance(t, ForeignTensor) for t in tensors):
        raise MixedDevices(f"a real meta tensor reached {func}: made below the dispatcher, "
                           f"where foreign_device does not see it; called from {caller()}")
    if foreign or to_foreign:
        _check_devices(func, args, tensors)
        generator = kwargs.get("generator")
        if generator is not None and generator.device.type == "cpu":
            raise MixedDevices(f"{func} draws from a CPU generator for a tensor on the model's "
                               f"device, which CUDA refuses; called from {caller()}")
    if _active and _active[-1] and func not in CROSS_DEVICE_OPS:
        _check_dtypes(func, tensors)
    if not foreign and not to_foreign:
        return func(*args, **kwargs)
    unwrapped = tree_map(lambda t: t.inner if isinstance(t, ForeignTensor) else t, (args, kwargs))
    out = func(*unwrapped[0], **unwrapped[1])
    if func._schema.is_mutable and not to_foreign:  # in place or out=: return the wrapper
        mutated = [a for a, arg in zip(args, func._schema.arguments)
                   if arg.alias_info is not None and arg.alias_info.is_write]
        mutated += [kwargs[arg.name] for arg in func._schema.arguments
                    if arg.alias_info is not None and arg.alias_info.is_write
                    and arg.name in kwargs]
        if len(mutated) == 1 and isinstance(out, torch.Tensor):
            return mutated[0]
    keep_cpu = device is not None and not to_foreign  # .cpu(), .to("cpu"), device="cpu"
    return tree_map(lambda t: ForeignTensor(t) if type(t) is torch.Tensor and not keep_cpu
                    else t, out)


def _check_devices(func, args, tensors) -> None:
    allowed = set()  # ids of the CPU tensors CUDA accepts here
    if func in CPU_INDEX_OPS:
        allowed = {id(t) for t in tree_flatten(args[1])[0] if isinstance(t, torch.Tensor)}
    for t in tensors:
        if isinstance(t, ForeignTensor) or id(t) in allowed or func in CROSS_DEVICE_OPS:
            continue
        scalar_ok = (torch.Tag.pointwise in func.tags or func in SCALAR_OPS
                     or func.__name__.startswith("_foreach_"))
        if t.device.type == "cpu" and t.dim() == 0 and scalar_ok:
            continue
        raise MixedDevices(
            f"{func} mixes a tensor on the model's device with a {tuple(t.shape)} "
            f"{t.dtype} tensor on {t.device}, where CUDA raises 'Expected all tensors to be "
            f"on the same device'; called from {caller()}")


def _check_dtypes(func, tensors) -> None:
    dtypes = {t.dtype for t in tensors if t.is_floating_point() and t.dim() > 0}
    if len(dtypes) > 1:
        raise MixedDtypes(f"{func} mixes floating dtypes {sorted(map(str, dtypes))}; "
                          f"called from {caller()}")


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}


class _DataMode(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` and its kin copy Python data below the dispatcher:
    made on the CPU here, then wrapped."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        foreign_device = device is not None and torch.device(device) == FOREIGN
        if func in DATA_FACTORIES and foreign_device and not isinstance(args[0], torch.Tensor):
            return ForeignTensor(func(*args, **dict(kwargs, device="cpu")))
        if (func is torch.Tensor.new_tensor and isinstance(args[0], ForeignTensor)
                and (device is None or foreign_device)):
            return ForeignTensor(args[0].inner.new_tensor(*args[1:], **dict(kwargs, device="cpu")))
        return func(*args, **kwargs)


@contextlib.contextmanager
def foreign_device(check_dtypes: bool = False):
    """Run the body with foreign-device factories and checks (see the module)."""
    _active.append(check_dtypes)
    try:
        with _DataMode(), _Mode():
            yield
    finally:
        _active.pop()


def foreign(tensor: torch.Tensor) -> torch.Tensor:
    """A foreign copy of a CPU tensor (an input "moved to the GPU")."""
    return ForeignTensor(tensor.detach().clone()).requires_grad_(tensor.requires_grad)


def to_foreign_device(module: nn.Module, dtype=None) -> nn.Module:
    """Move ``module``'s parameters and buffers to the foreign device in place (and to
    ``dtype`` for its floating ones), as ``module.to("cuda", dtype)`` would; shared
    parameters stay shared."""
    done = {}
    for sub in module.modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in list(getattr(sub, kind).items()):
                if t is None:
                    continue
                if id(t) not in done:
                    data = t.detach()
                    if dtype is not None and data.is_floating_point():
                        data = data.to(dtype)
                    new = ForeignTensor(data.clone())
                    if kind == "_parameters":
                        new = nn.Parameter(new, requires_grad=t.requires_grad)
                        for attribute, value in vars(t).items():  # e.g. param_group tags
                            setattr(new, attribute, value)
                    done[id(t)] = new
                getattr(sub, kind)[name] = done[id(t)]
        if isinstance(sub, nn.RNNBase):
            sub._init_flat_weights()
    return module
