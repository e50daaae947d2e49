"""A small name -> factory registry shared by models, criteria and datasets.

``register`` refuses duplicate names, ``create`` refuses unknown names and unknown keyword
arguments with a one-line message that lists what is valid, so every CLI error about a bad
name or option reads the same.
"""
from __future__ import annotations

import inspect
from typing import Callable, Generic, TypeVar
from pruning.errors import InputError

T = TypeVar("T")


class UnknownNameError(InputError):
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

    def register_class(self, name: str) -> Callable[[type], type]:
        """Like :meth:`register`, for a class that also records its registry ``name``."""

        def decorator(cls: type) -> type:
            cls.name = name
            return self.register(name)(cls)

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
        valid = accepted_options(factory)
        unknown = [] if valid is None else sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(
                f"{self.kind} {name!r} got unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(valid) or '(none)'}"
            )
        return factory(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


def accepted_options(factory: Callable) -> list[str] | None:
    """Keyword options ``factory`` accepts, or None when it accepts any.

    For a class, the parameters of its ``__init__`` and, while an ``__init__`` forwards
    ``**kwargs``, those of its bases' ``__init__`` (so a subclass need not repeat the options
    its base validates).
    """
    if isinstance(factory, type):
        functions = [cls.__dict__["__init__"] for cls in factory.__mro__ if "__init__" in cls.__dict__]
    else:
        functions = [factory]
    names: list[str] = []
    for function in functions:
        parameters = inspect.signature(function).parameters.values()
        names += [
            p.name for p in parameters
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None
