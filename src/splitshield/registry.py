"""Name -> class registries for the plugin families (datasets, models, defenses, attacks).

Unknown or duplicate names raise errors that list the valid names, as Opacus and timm do.
"""
from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from splitshield.configtools import from_dict
from splitshield.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.family} name {name!r}")
            self._items[name] = obj
            try:
                setattr(obj, "registry_name", name)
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.family} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def config_of(self, name: str, params: Mapping[str, Any], path: str) -> Any:
        """The typed hyper-parameters of member ``name`` (its ``Config`` dataclass) from ``params``; an unknown name
        or key is a ConfigError naming ``path`` and the valid names or keys."""
        try:
            cls = self.get(name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return from_dict(cls.Config, dict(params), f"{path}[{name}]")  # type: ignore[attr-defined]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
