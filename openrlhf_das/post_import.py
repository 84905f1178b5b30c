"""Run a function right after a module's body executes (post-import hooks), stdlib only.

:class:`PostImportHook` is a ``sys.meta_path`` finder that finds nothing itself: for a watched
module name it asks the other finders for the spec and wraps the loader, so that
``on_import(name, module)`` runs right after the module body (before anyone else sees the
module). Modules already imported are handled by the caller (``sys.modules``). Used by the
OpenRLHF patches (``integrations/openrlhf/patches.py``), the runner reference of the engine layer
(``engines/vllm/runner_ref.py``) and the GPU-machine shims (``benchmarks/gpu/gpu_compat.py``); each owns
one hook. Top-level: every layer may import it.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any, Callable, Collection


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, name: str, on_import: Callable[[str, Any], None]) -> None:
        self._loader = loader
        self._name = name
        self._on_import = on_import

    def create_module(self, spec):  # noqa: D401 - Loader API
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._on_import(self._name, module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, ...
        return getattr(self._loader, name)


class PostImportHook(importlib.abc.MetaPathFinder):
    """Calls ``on_import(name, module)`` after the body of each module in ``names`` runs, while
    ``wanted(name)`` is true (e.g. "not patched yet"). Hooks skip each other when looking for
    the real spec, so two hooks must not watch the same module."""

    def __init__(self, names: Collection[str], on_import: Callable[[str, Any], None],
                 wanted: Callable[[str], bool] = lambda name: True) -> None:
        self.names = frozenset(names)
        self.on_import = on_import
        self.wanted = wanted

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names or not self.wanted(fullname):
            return None
        for finder in sys.meta_path:
            if isinstance(finder, PostImportHook) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, fullname, self.on_import)
        return spec

    def install(self) -> None:
        """Put this hook first on ``sys.meta_path`` (once)."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    @property
    def installed(self) -> bool:
        return self in sys.meta_path
