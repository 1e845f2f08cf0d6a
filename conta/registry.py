"""Registries at conta's three extension points: datasets, backbones and seed refiners.

A registry maps a config name (`data.dataset`, `*.arch`, `ir_label.refiner`) to what builds it.
Entries register themselves where they are defined (`@DATASETS.register("voc12")`), so adding
one is one file. The built-in ones are found by importing every module of the registry's
package the first time a name is looked up; an entry defined elsewhere (a plugin, a test)
registers when its module is imported, before the config that names it is loaded.

This module sits on the bottom floor (it imports only `conta.errors`), so `conta.config` checks
names against the keys without importing the packages that import it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from conta.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries for one config key; the built-ins are the modules of `package`."""

    def __init__(self, key: str, package: str) -> None:
        self.key = key
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `entry` under `name`; a name taken by another entry is an error."""

        def add(entry: T) -> T:
            if self._entries.get(name, entry) is not entry:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def names(self) -> list[str]:
        """The registered names, sorted (registration order depends on what was imported first)."""
        self._discover()
        return sorted(self._entries)

    def check(self, name: str, key: str | None = None) -> None:
        """A ConfigError in the config's one-line style when `name` is not registered."""
        if name not in self.names():
            key = key or self.key
            raise ConfigError(f"{key}: {name!r} is not one of {', '.join(map(repr, self.names()))}", key=key)

    def get(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")


DATASETS: Registry = Registry("data.dataset", "conta.data")
"""data.dataset -> `conta.data.build.DatasetEntry` (how to build its reader, prepare and check it)."""
BACKBONES: Registry = Registry("arch", "conta.models")
"""cam.backbone.arch, irn.backbone.arch, seg.arch, pretrain.arch -> a `conta.models.backbone.BackboneFactory`."""
REFINERS: Registry = Registry("ir_label.refiner", "conta.ops")
"""ir_label.refiner -> a `conta.ops.refiners.SeedRefiner` (snaps the seeds' thresholded CAMs to the image)."""
