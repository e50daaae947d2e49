"""A small name -> factory registry shared by models, criteria and datasets.

``register`` refuses duplicate names, ``create`` refuses unknown names and unknown keyword
arguments with a one-line message that lists what is valid, so every CLI error about a bad
name or option reads the same.
"""
from __future__ import annotations

import inspect
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message lists the valid names."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs) -> T:
        factory = self.get(name)
        parameters = inspect.signature(factory).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        unknown = [] if accepts_any else sorted(set(kwargs) - set(parameters))
        if unknown:
            valid = [p for p in parameters if p != "self"]
            raise TypeError(
                f"{self.kind} {name!r} got unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
        return factory(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
