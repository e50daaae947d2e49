"""What every command returns: the readable text and the JSON-able data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CommandResult"]


@dataclass(frozen=True)
class CommandResult:
    text: str
    data: dict[str, Any]
