"""Where the hydra configs live, and registration of the typed schemas they mirror."""

from __future__ import annotations

from pathlib import Path

# Shipped inside the package (package data), so a non-editable install has them too.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
