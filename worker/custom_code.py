"""User model code: ``"architecture": "python:package.module:factory"``.

A repository is data and never supplies code. A model may name a factory in a
Python package the operator installed and allowed (``--allow-code acme,...``;
off by default); the factory builds an ``nn.Module`` from the config's ``args``
(``factory(**args)``, on the meta device, so the loader attaches the mapped
safetensors weights as it does for the built-in architectures). Packages match
by whole name: allowing ``acme`` allows ``acme`` and ``acme.models``, never
``acme_evil``. A name that is not allowed is never imported. Every module on
the way (``acme``, then ``acme.models``) is located before it is imported, and
one that lies inside a data directory (the model repository, the disk cache, a
directory store) is refused unimported, whatever ``sys.path`` says. Imported
code stays imported: changed code needs a worker restart.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from protocol.errors import ModelUnavailable

log = logging.getLogger(__name__)

_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_allowed(text: str | Iterable[str]) -> tuple[str, ...]:
    """``acme,beta.models`` -> ('acme', 'beta.models'); ValueError for a name that is not a package name."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    for name in names:
        if not _PACKAGE.fullmatch(name):
            raise ValueError(f"--allow-code: {name[:64]!r} is not a Python package name")
    return tuple(dict.fromkeys(names))


def package_allowed(module: str, allowed: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``allowed`` or inside one, by whole dotted names."""
    return any(module == package or module.startswith(package + ".") for package in allowed)


@dataclass(frozen=True, slots=True)
class CodePolicy:
    """Which packages model configs may name, and which directories are data."""

    allowed: tuple[str, ...] = ()
    data_dirs: tuple[Path, ...] = ()

    def factory(self, where: str, code: str) -> Callable[..., Any]:
        """The callable ``code`` (``package.module:factory``) names, imported under the rules above."""
        module_name, _, attribute = code.partition(":")
        if not package_allowed(module_name, self.allowed):
            allowed = ", ".join(self.allowed) or "none"
            raise ModelUnavailable(
                f"{where}: architecture 'python:{code}' names code in '{module_name}', which this worker does not "
                f"allow (allowed packages: {allowed}; the operator allows a package with --allow-code)"
            )
        module = self._import(where, module_name)
        factory = getattr(module, attribute, None)
        if not callable(factory):
            raise ModelUnavailable(f"{where}: module '{module_name}' has no factory '{attribute}'")
        return factory

    def _import(self, where: str, module_name: str) -> ModuleType:
        parts = module_name.split(".")
        module: ModuleType | None = None
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            module = sys.modules.get(name)
            if module is None:
                try:
                    # A top-level name is found without importing anything; a submodule's
                    # parent is already imported (and was checked) by the step before.
                    spec = importlib.util.find_spec(name)
                except (ImportError, ValueError):
                    spec = None
                if spec is None:
                    raise ModelUnavailable(f"{where}: no module named '{name}' is installed for this worker")
                self._check_outside_data(where, name, spec.origin, spec.submodule_search_locations)
                try:
                    module = importlib.import_module(name)
                except Exception as exc:  # the operator's code may raise anything while importing
                    log.warning("%s: importing %s failed", where, name, exc_info=True)
                    raise ModelUnavailable(
                        f"{where}: module '{name}' failed to import ({type(exc).__name__})"
                    ) from None
            self._check_outside_data(where, name, getattr(module, "__file__", None), getattr(module, "__path__", None))
        assert module is not None
        return module

    def _check_outside_data(self, where: str, name: str, origin: str | None, locations: Iterable[str] | None) -> None:
        places = [p for p in (origin, *(locations or ())) if p and p not in ("built-in", "frozen")]
        for place in places:
            real = Path(os.path.realpath(place))
            for data in self.data_dirs:
                if real.is_relative_to(Path(os.path.realpath(data))):
                    raise ModelUnavailable(
                        f"{where}: module '{name}' lies inside a model repository: a repository is data and never "
                        "supplies code (install the package elsewhere)"
                    )


def build_module(where: str, factory: Callable[..., Any], args: dict[str, Any]) -> nn.Module:
    """``factory(**args)`` (the caller picks the device); ModelUnavailable unless it makes an nn.Module."""
    try:
        module = factory(**args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{where}: the factory refused its args ({type(exc).__name__}: {_line(exc)})") from None
    except Exception as exc:  # the operator's code may raise anything
        log.warning("%s: the model factory failed", where, exc_info=True)
        raise ModelUnavailable(f"{where}: the factory failed ({type(exc).__name__})") from None
    if not isinstance(module, nn.Module):
        raise ModelUnavailable(f"{where}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
