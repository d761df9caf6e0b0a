"""Building a network that an untrusted config describes, within a budget of bytes and modules.

A config.json of a few hundred bytes can ask for a network of any size ("num_classes": 1500000,
12,000 channels, 100,000 blocks, float64 tensors). ``build_within_budget`` builds it first on
PyTorch's "meta" device, where no tensor is allocated, counting the bytes of its parameters and
buffers and its modules as they are registered, and stops at the first one over the budget.
A tensor that replaces another one (transformers 5 builds on "meta", then assigns each loaded
tensor with ``setattr``) is counted in place of the one it replaces, not beside it. On the meta
network, one forward pass of a probe image counts the bytes of every tensor an operation
returns (eager attention's (heads, N, N) scores included): a network whose activations at its
input size are over their budget is refused too. Only a network within both budgets is then
built for real (still counted: an architecture that cannot be built on the meta device is
stopped there).

The budget comes from the weights file that pays for the network (``weights_budget``), and never
exceeds MAX_NETWORK_BYTES, whatever the caller asks.
"""

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ptame.errors import CheckpointError
from ptame.loading.untrusted import DTYPE_BYTES, SafetensorsHeader

MAX_NETWORK_BYTES = 1_600_000_000  # every path: ViT-L's 304 M float32 parameters fit, giant models do not
BYTES_SLACK = 16 * 2**20  # buffers a weights file may leave out (position indices, attention masks)
MIN_ACTIVATION_BYTES = 256 * 2**20  # what any network may spend on one forward pass of its probe image
ACTIVATION_BYTES_PER_WEIGHT_BYTE = 16  # EfficientNet-B7 at 600 pixels needs 11, DINOv2-L at 518 needs 10
MAX_ACTIVATION_BYTES = 12 * 2**30
MIN_FLOAT_BYTES = 4  # a float16 weights file may fill a float32 network (timm builds float32)

Built = TypeVar("Built", bound=nn.Module)
_counting = threading.local()  # this thread's budget while it builds a network; hooks of other threads see none
logger = logging.getLogger(__name__)


class BudgetExceeded(CheckpointError):
    """A network being built asked for more bytes or modules than its budget."""


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor's elements take (on the meta device: would take)."""
    return tensor.numel() * tensor.element_size()


def weights_budget(header: SafetensorsHeader | None) -> int:
    """The bytes a network built for a weights file may hold: its tensors' elements, each at
    least MIN_FLOAT_BYTES wide, plus BYTES_SLACK; at most MAX_NETWORK_BYTES. None (no weights
    file): MAX_NETWORK_BYTES."""
    if header is None:
        return MAX_NETWORK_BYTES
    paid = sum(info.numel * max(DTYPE_BYTES[info.dtype], MIN_FLOAT_BYTES) for info in header.tensors.values())
    return min(paid + BYTES_SLACK, MAX_NETWORK_BYTES)


@dataclass
class Budget:
    """What a network may hold: bytes of its parameters and buffers, and modules; ``what``
    names it in the error (e.g. "the auxiliary network of /path/config.json")."""

    max_bytes: int
    max_modules: int
    what: str
    bytes: int = 0
    modules: int = 0

    def add(self, added_bytes: int, modules: int) -> None:
        """Count a tensor's bytes (negative: a tensor replaced) or a new module; raise once over the budget."""
        self.bytes += added_bytes
        self.modules += modules
        if self.bytes > self.max_bytes:
            raise BudgetExceeded(
                f"{self.what} asks for more than {self.max_bytes:,} bytes of parameters and buffers "
                "(refused before allocating)"
            )
        if self.modules > self.max_modules:
            raise BudgetExceeded(
                f"{self.what} asks for more than {self.max_modules:,} modules (refused while building)"
            )


def _on_tensor(table: str) -> Callable[[nn.Module, str, torch.Tensor | None], None]:
    """A registration hook for the module's ``table`` ("_parameters" or "_buffers"): called before
    the new tensor is stored, so the one it replaces is still there."""

    def hook(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        budget = getattr(_counting, "budget", None)
        if budget is None:
            return
        replaced = module.__dict__.get(table, {}).get(name)
        change = (tensor_bytes(tensor) if tensor is not None else 0) - (
            tensor_bytes(replaced) if isinstance(replaced, torch.Tensor) else 0
        )
        budget.add(change, 0)

    return hook


def _on_module(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    budget = getattr(_counting, "budget", None)
    if budget is not None and submodule is not None:
        budget.add(0, 1)


module_hooks.register_module_parameter_registration_hook(_on_tensor("_parameters"))
module_hooks.register_module_buffer_registration_hook(_on_tensor("_buffers"))
module_hooks.register_module_module_registration_hook(_on_module)


@contextlib.contextmanager
def _counted(budget: Budget) -> Iterator[None]:
    previous = getattr(_counting, "budget", None)
    _counting.budget = budget
    try:
        yield
    finally:
        _counting.budget = previous


class _ActivationCounter(TorchDispatchMode):
    """Counts the bytes of every tensor an operation returns (views and in-place results, which
    share a tensor's memory, are not counted again); raises once over ``limit``."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__()
        self.limit, self.what, self.bytes = limit, what, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        if not any(result.alias_info is not None for result in func._schema.returns):
            self.bytes += sum(tensor_bytes(t) for t in tree_leaves(output) if isinstance(t, torch.Tensor))
            if self.bytes > self.limit:
                raise BudgetExceeded(
                    f"{self.what} needs more than {self.limit:,} bytes of activations for one image "
                    "(refused before allocating)"
                )
        return output


def activation_limit(network_bytes: int) -> int:
    """The bytes of activations a network of ``network_bytes`` may spend on one image:
    ACTIVATION_BYTES_PER_WEIGHT_BYTE per byte of its weights, at least MIN_ACTIVATION_BYTES and
    at most MAX_ACTIVATION_BYTES."""
    return min(max(ACTIVATION_BYTES_PER_WEIGHT_BYTE * network_bytes, MIN_ACTIVATION_BYTES), MAX_ACTIVATION_BYTES)


def check_activations(model: nn.Module, side: int, limit: int, what: str) -> None:
    """One forward pass of a (1, 3, side, side) image through a network built on the meta
    device, counting the bytes its operations return; nothing is allocated.

    Raises:
        BudgetExceeded: over ``limit`` bytes.
    """
    with _ActivationCounter(limit, what), torch.no_grad():
        model.eval()(torch.empty(1, 3, side, side, device="meta"))


def build_within_budget(
    build: Callable[[], Built],
    max_bytes: int,
    max_modules: int,
    what: str,
    architecture: Callable[[], nn.Module] | None = None,
    input_side: Callable[[nn.Module], int | None] | None = None,
) -> Built:
    """``build()``, if the network it builds stays within the budget.

    Args:
        build: builds the network on the default device.
        max_bytes: the most bytes its parameters and buffers may hold together (a replaced
            tensor counts no more); at most MAX_NETWORK_BYTES whatever is asked.
        max_modules: the most modules (submodules registered while building) it may have.
        what: names the network in the error.
        architecture: builds the same network without loading weights (run on "meta" first);
            None: ``build``.
        input_side: the side of the square image the network built on "meta" takes (None: no
            activation check); its forward pass must stay within ``activation_limit`` of its
            bytes.

    Raises:
        BudgetExceeded: over the budget, before its tensors were allocated where the
            architecture builds (and runs) on the meta device.
        Exception: whatever ``build`` raises for other reasons.
    """
    max_bytes = min(max_bytes, MAX_NETWORK_BYTES)
    budget = Budget(max_bytes, max_modules, what)
    try:
        with _counted(budget), torch.device("meta"):
            model = (architecture or build)()
            side = input_side(model) if input_side is not None else None
            if side is not None:
                check_activations(model, side, activation_limit(budget.bytes), what)
    except BudgetExceeded:
        raise
    except Exception as error:  # noqa: BLE001 - some architectures read tensor values while building; the real build is counted too
        logger.debug("%s cannot be built or run on the meta device (%s): counted while built", what, error)
    with _counted(Budget(max_bytes, max_modules, what)):
        return build()
