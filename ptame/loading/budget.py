"""Building a network that an untrusted config describes, within a budget of elements and modules.

A config.json of a few hundred bytes can ask for a network of any size ("num_classes": 1500000,
12,000 channels, 100,000 blocks). ``build_within_budget`` builds it first on PyTorch's "meta"
device, where no tensor is allocated, counting the elements of its parameters and buffers and
its modules as they are registered, and stops at the first one over the budget; only a network
within the budget is then built for real (still counted: an architecture that cannot be built
on the meta device is stopped there).
"""

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from ptame.errors import CheckpointError

Built = TypeVar("Built", bound=nn.Module)
_counting = threading.local()  # this thread's budget while it builds a network; hooks of other threads see none


class BudgetExceeded(CheckpointError):
    """A network being built asked for more elements or modules than its budget."""


@dataclass
class Budget:
    """What a network may hold: elements of its parameters and buffers, and modules; ``what``
    names it in the error (e.g. "the auxiliary network of /path/config.json")."""

    max_elements: int
    max_modules: int
    what: str
    elements: int = 0
    modules: int = 0

    def add(self, elements: int, modules: int) -> None:
        """Count a new tensor's elements or a new module; raise once over the budget."""
        self.elements += elements
        self.modules += modules
        if self.elements > self.max_elements:
            raise BudgetExceeded(
                f"{self.what} asks for more than {self.max_elements:,} parameter elements (refused before allocating)"
            )
        if self.modules > self.max_modules:
            raise BudgetExceeded(f"{self.what} asks for more than {self.max_modules:,} modules (refused while building)")


def _on_tensor(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
    budget = getattr(_counting, "budget", None)
    if budget is not None and tensor is not None:
        budget.add(tensor.numel(), 0)


def _on_module(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
    budget = getattr(_counting, "budget", None)
    if budget is not None and submodule is not None:
        budget.add(0, 1)


module_hooks.register_module_parameter_registration_hook(_on_tensor)
module_hooks.register_module_buffer_registration_hook(_on_tensor)
module_hooks.register_module_module_registration_hook(_on_module)


@contextlib.contextmanager
def _counted(budget: Budget) -> Iterator[None]:
    previous = getattr(_counting, "budget", None)
    _counting.budget = budget
    try:
        yield
    finally:
        _counting.budget = previous


def build_within_budget(
    build: Callable[[], Built],
    max_elements: int,
    max_modules: int,
    what: str,
    architecture: Callable[[], nn.Module] | None = None,
) -> Built:
    """``build()``, if the network it builds stays within the budget.

    Args:
        build: builds the network on the default device.
        architecture: builds the same network without loading weights (run on "meta" first);
            None: ``build``.
        max_elements: the most elements its parameters and buffers may hold together.
        max_modules: the most modules (submodules registered while building) it may have.
        what: names the network in the error.

    Raises:
        BudgetExceeded: over the budget, before its tensors were allocated where the
            architecture builds on the meta device.
        Exception: whatever ``build`` raises for other reasons.
    """
    try:
        with _counted(Budget(max_elements, max_modules, what)), torch.device("meta"):
            (architecture or build)()
    except BudgetExceeded:
        raise
    except Exception:  # noqa: BLE001 - some architectures read tensor values while building; the real build is counted too
        pass
    with _counted(Budget(max_elements, max_modules, what)):
        return build()
