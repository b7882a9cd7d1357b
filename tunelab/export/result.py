"""What an export returns: the folder written and how it compares with its source (also in its parity.json)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExportResult:
    out: Path  # the folder written
    parity: dict  # the comparison with the source model, as parity.json holds it
