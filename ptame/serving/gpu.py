"""Model work on a Hugging Face ZeroGPU Space, in ``spaces.GPU``-decorated calls; plain calls elsewhere.

On ZeroGPU hardware (the Space sets ``SPACES_ZERO_GPU=true``) the app has a GPU only while a function
decorated with ``spaces.GPU`` runs, and that function runs in a forked worker process: ZeroGPU pickles
its arguments and its result across, and what the function changes in its own memory is not seen by
the app (so caches stay in the app, around the call). Hence, on ZeroGPU:

- the models are loaded on "cuda" by the app's main thread before it launches (``serving_device``,
  ``load_before_launch``): until then ZeroGPU emulates CUDA on the CPU, and each worker finds the
  weights moved to its GPU. ZeroGPU's emulation covers the main thread only, so no model is loaded
  in the background there;
- ``on_gpu(function, *args)`` calls a module-level function in the decorated worker. The loaded
  models among its arguments (and their classifiers and explainers) reach it by reference: the worker
  is a fork of the app and holds them already (``share`` registers them); registered methods go by
  their key; everything else is pickled. Its tensors are moved to the worker's device and what it
  returns comes back on the CPU. A function that pickle cannot find by name (a progress report defined
  inside a function, a lambda) arrives as None, so streamed methods report no progress there.

``spaces`` is imported, and ``on_gpu``'s worker function decorated, when this module is imported on
ZeroGPU: ZeroGPU needs both before any model touches CUDA and before the app launches. Elsewhere
``spaces`` is not imported (off a Space its decorator is a no-op, but it imports Gradio), and
``on_gpu(function, *args)`` is ``function(*args)``, on whatever device the models are on.
"""

import dataclasses
import io
import math
import os
import pickle
import sys
import types
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import torch

from ptame.errors import ModelUnavailable
from ptame.methods import Method, get_method
from ptame.serving.loader import LoadedModel
from ptame.serving.models import ModelRegistry

ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set to "true" by Hugging Face on ZeroGPU Spaces (the spaces package reads it)
GPU_SECONDS = 60  # the longest one call may hold the GPU (ZeroGPU's default; a Score-CAM of ResNet-50 takes ~5 s)
Result = TypeVar("Result")

_shared: dict[int, object] = {}  # id -> object, for references the worker resolves in its copy of this memory


def zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU hardware (``SPACES_ZERO_GPU`` is 1, t or true, as ``spaces`` reads it)."""
    return os.environ.get(ZERO_GPU_ENV, "").lower() in ("1", "t", "true")


def serving_device(requested: str) -> str:
    """Where the app's models live: "cuda" on ZeroGPU (the GPU ``spaces`` emulates until a worker has
    one), else ``requested``."""
    return "cuda" if zero_gpu() and torch.cuda.is_available() else requested


def share(model: LoadedModel) -> LoadedModel:
    """Register a loaded model (its classifier and explainer too) to reach ``on_gpu``'s worker by
    reference; returns it. Register before the first ``on_gpu`` call: a worker started earlier
    does not know it."""
    for part in (model, model.backbone, model.backbone.model, model.explainer):
        if part is not None:
            _shared[id(part)] = part
    return model


def load_before_launch(registry: ModelRegistry) -> list[str]:
    """Load every model of ``registry`` now, on this (the main) thread, and ``share`` each that loads.

    Turns the registry's explainer retry off: a retry would load in a background thread (ZeroGPU
    emulates CUDA on the main thread only) and replace the model by one the GPU worker, forked
    earlier, does not hold. A model whose explainer fails here stays without it until a restart.

    Returns:
        The keys of the models that did not load (their status says why).
    """
    registry.explainer_retry_s = math.inf
    failed = []
    for key in registry.entries:
        try:
            share(registry.load(key))
        except ModelUnavailable:
            failed.append(key)
    return failed


def on_gpu(function: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """``function(*args, **kwargs)``, on ZeroGPU in a ``spaces.GPU`` worker (see the module docstring).

    Args:
        function: a module-level function (pickled by name on ZeroGPU).
        args, kwargs: its arguments; on ZeroGPU, loaded models must be ``share``-d.

    Raises:
        ValueError: on ZeroGPU, a model among the arguments that was not shared.
        Whatever ``function`` raises.
    """
    if not zero_gpu():
        return function(*args, **kwargs)
    return pickle.loads(_gpu_call()(_dumps((function, args, kwargs))))


@cache
def _gpu_call() -> Callable[[bytes], Any]:
    """``_run_in_worker`` decorated with ``spaces.GPU`` (on ZeroGPU, where ``spaces`` is imported)."""
    import spaces

    return spaces.GPU(duration=GPU_SECONDS)(_run_in_worker)


def _run_in_worker(payload: bytes) -> bytes:
    """In the GPU worker: the call of ``payload`` (see ``_dumps``), its tensors on the worker's device; its
    result on the CPU, pickled here (by value: no file descriptor of the worker's memory to fetch later)."""
    function, args, kwargs = _Unpickler(io.BytesIO(payload)).load()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = function(*_moved(args, device), **_moved(kwargs, device))
    return pickle.dumps(_moved(result, torch.device("cpu")))


def _moved(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (in tuples, lists, dicts and dataclasses) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_moved(item, device) for item in value)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    shared = id(value) in _shared or isinstance(value, Method)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and not shared:
        changes = {f.name: _moved(getattr(value, f.name), device) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def _is_local_function(value: object) -> bool:
    """A function that pickle cannot find by its module and qualified name (one defined inside another, a
    lambda anywhere): it cannot be pickled by name."""
    if not isinstance(value, types.FunctionType):
        return False
    found: object = sys.modules.get(value.__module__)
    for name in value.__qualname__.split("."):
        found = getattr(found, name, None)
    return found is not value


def _dumps(call: object) -> bytes:
    """Pickle a call, shared objects and methods by reference, local functions as None."""
    buffer = io.BytesIO()
    _Pickler(buffer).dump(call)
    return buffer.getvalue()


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple[str, object] | None:
        if isinstance(obj, Method):
            return ("method", obj.key)
        if id(obj) in _shared:
            return ("shared", id(obj))
        if isinstance(obj, (LoadedModel, torch.nn.Module)):
            raise ValueError(
                "on ZeroGPU a model reaches the GPU worker by reference: load it before launch and share it "
                "(ptame.serving.gpu.load_before_launch)"
            )
        if _is_local_function(obj):
            return ("dropped", None)
        return None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: tuple[str, object]) -> object:
        kind, value = pid
        if kind == "method":
            return get_method(str(value))
        if kind == "dropped":
            return None
        try:
            return _shared[int(value)]  # type: ignore[arg-type]
        except KeyError:
            raise pickle.UnpicklingError(
                "a model shared after the ZeroGPU worker started: share every model before launch"
            ) from None


if zero_gpu():
    # ZeroGPU wants ``spaces`` imported before CUDA is touched (it then emulates CUDA on the main thread) and its
    # GPU functions decorated before the app launches: both when the app imports this module, before any model.
    _gpu_call()
