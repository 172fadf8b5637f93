"""Where the hydra configs live, and registration of the typed schemas they mirror."""

from __future__ import annotations

from pathlib import Path

# configs/ sits beside the package in the repository (editable install, as the README sets up).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
