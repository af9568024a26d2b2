"""One registry for every pluggable kind (methods, tasks): built-in modules, then entry-point
plugins, loaded once on first use. A duplicate name or a class of the wrong kind is refused."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from dlm_bench.errors import UserError


class Registry:
    def __init__(self, kind: str, base: type, package: str, builtin: tuple[str, ...], group: str):
        self.kind, self.base, self.package, self.builtin, self.group = kind, base, package, builtin, group
        self._classes: dict[str, type] = {}
        self._loaded = False

    def register(self, cls: type) -> type:
        """Class decorator. Re-running the same definition (a module re-import) replaces it quietly."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{cls!r} is not a subclass of {self.base.__name__}; cannot register it as a {self.kind}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} has no `name`; every {self.kind} needs one")
        old = self._classes.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise UserError(f"two {self.kind}s are named {name!r}: {old.__module__}.{old.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}")
        self._classes[name] = cls
        return cls

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self.builtin:
            try:
                importlib.import_module(f"{self.package}.{mod}")
            except ModuleNotFoundError as e:  # a module not built yet must not break the others
                if e.name != f"{self.package}.{mod}":
                    raise
        for ep in entry_points(group=self.group):
            ep.load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        self._load()
        if name not in self._classes:
            raise UserError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self._classes))}")
        return self._classes[name]
