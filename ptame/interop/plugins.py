"""Methods from outside ptame's built-ins, registered when the app or the command line starts.

Two sources, both through ``ptame.methods.register_method`` as a built-in registers (the registry
knows nothing of them):

- the optional adapters of ``OPTIONAL_METHOD_MODULES``, each when the package it needs is
  installed: captum's ``LayerGradCam`` and ``Occlusion`` (``ptame.interop.captum``) once
  ``pip install ptame-xai[captum]`` (or ``requirements-interop.txt``) put captum there;
- the modules named in ``$PTAME_METHOD_MODULES`` (comma-separated, importable from the working
  directory): a user's own methods. A module registers its methods when imported, or has a
  ``register()`` that does.

``python app.py`` and ``python -m ptame explain`` call ``register_method_modules()`` before they
read the registry; ``train evaluate`` does not (its default, every registered method, stays the
paper's methods).
"""

import importlib
import importlib.util
import os
from types import ModuleType

from ptame.errors import PtameError

METHOD_MODULES_ENV = "PTAME_METHOD_MODULES"
OPTIONAL_METHOD_MODULES = {"ptame.interop.captum": "captum"}  # module -> the package it needs


class MethodModuleError(PtameError):
    """A module named in ``$PTAME_METHOD_MODULES`` that cannot be imported or fails to register."""


def method_modules() -> list[str]:
    """The modules to register: the optional adapters whose package is installed, then
    ``$PTAME_METHOD_MODULES``'s, in that order, each once."""
    installed = [module for module, package in OPTIONAL_METHOD_MODULES.items() if importlib.util.find_spec(package)]
    named = [name.strip() for name in os.environ.get(METHOD_MODULES_ENV, "").split(",") if name.strip()]
    return list(dict.fromkeys([*installed, *named]))


def register_method_modules() -> list[str]:
    """Import each of ``method_modules()`` and call its ``register()`` if it has one.

    Returns:
        The modules registered, in order.

    Raises:
        MethodModuleError: a module that cannot be imported or whose ``register()`` fails
            (its name, ``$PTAME_METHOD_MODULES`` and the cause).
    """
    modules = method_modules()
    for name in modules:
        _register(name)
    return modules


def _register(name: str) -> ModuleType:
    """Import ``name`` and call its ``register()``; errors name the module and the variable."""
    try:
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if callable(register):
            register()
    except Exception as error:  # any failure of someone else's module becomes one clear error
        raise MethodModuleError(
            f"the method module {name!r} (from {METHOD_MODULES_ENV} or an installed extra) did not register: "
            f"{type(error).__name__}: {error}"
        ) from error
    return module
