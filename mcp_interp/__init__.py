"""mcp-interp: an MCP server for mechanistic interpretability on real language models.

Besides `Lab`, this top-level module holds the lazy-import helpers every layer may use (it belongs to no layer):
the server must answer the MCP handshake without importing torch, TransformerLens or matplotlib (seconds of
start-up), so modules on its start-up path name those through `lazy` and package `__init__`s export their
heavy modules' names through `lazy_exports`; `warm` imports it all ahead of use (the server's background warm-up).
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

__version__ = "0.1.0"
__all__ = ["Lab", "Lazy", "__version__", "lazy", "lazy_exports", "warm"]


def __getattr__(name: str):
    # `from mcp_interp import Lab` without importing torch and the tools for every `import mcp_interp`
    if name == "Lab":
        from .server.lab import Lab
        return Lab
    raise AttributeError(f"module 'mcp_interp' has no attribute {name!r}")


class Lazy:
    """A module, or one name in a module, imported on its first use (a call or an attribute read): the module that
    holds it imports nothing heavy when it is imported. Made by `lazy`."""

    __slots__ = ("_Lazy__module", "_Lazy__name")  # private names: never shadow the target's attributes

    def __init__(self, module: str, name: str | None = None):
        object.__setattr__(self, "_Lazy__module", module)
        object.__setattr__(self, "_Lazy__name", name)

    def __resolve(self) -> Any:
        # import_module, not sys.modules: it waits for a module another thread (the warm-up) is still importing
        module = importlib.import_module(self.__module)
        return module if self.__name is None else getattr(module, self.__name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__resolve()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.__resolve(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:  # patches the target, as on the module before
        setattr(self.__resolve(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self.__resolve(), attr)

    def __repr__(self) -> str:
        return f"<lazy {self.__module}{'' if self.__name is None else '.' + self.__name}>"


_LAZY: list[tuple[str, Callable[[], Any]]] = []  # (what, how to import it now) of each lazy name and export: `warm`


def lazy(module: str, *names: str) -> Any:
    """`module` (absolute name) itself, or each of its `names` (a tuple when several), imported on first use:
    `torch = lazy("torch")`, `patch_sweep = lazy("mcp_interp.methods.patching", "patch_sweep")`. Call sites
    are unchanged and a test may still replace the name on its module. Only for modules and for names that are
    called or read from, never for classes used in `isinstance`, `except` or as a base."""
    made = tuple(Lazy(module, n) for n in names) or (Lazy(module),)
    _LAZY.extend((repr(d), d._Lazy__resolve) for d in made)
    return made if len(made) > 1 else made[0]


def lazy_exports(package: str, exports: dict[str, Iterable[str]]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """PEP 562 `__getattr__` and `__dir__` for a package `__init__` whose `exports` (module relative to the package
    -> names, "name as alias" as in an import) are imported from their module on first use, so that importing the
    package (for its light modules) imports no torch; `from package import name` works as before."""
    where: dict[str, tuple[str, str]] = {}
    for module, names in exports.items():
        for name in names:
            attr, _, alias = name.partition(" as ")
            where[alias or attr] = (module, attr)

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = where[name]
        value = getattr(importlib.import_module(module, package), attr)
        return vars(sys.modules[package]).setdefault(name, value)  # later reads skip this hook

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    _LAZY.extend((f"{package}.{name}", lambda n=name: getattr(importlib.import_module(package), n)) for name in where)
    return __getattr__, __dir__


def warm(stop: threading.Event | None = None) -> list[str]:
    """Import every lazy name and lazy export now, until `stop` is set (the server's one importer thread:
    server/warm_up.py); returns what failed to import, with why (the code that needs it raises when it runs)."""
    failed = []
    for what, resolve in list(_LAZY):
        if stop is not None and stop.is_set():
            break
        try:
            resolve()
        except Exception as e:
            failed.append(f"{what}: {type(e).__name__}: {e}")
    return failed
