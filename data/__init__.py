"""Catalogs (models, GPUs), committed baselines and probe results.

The folder is a package so that its files are readable from a checkout and from an
installed wheel alike: use :func:`path` rather than building paths by hand.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def path(*parts: str) -> Path:
    """Path of a file inside the data folder, e.g. ``path("models.json")``."""
    return ROOT.joinpath(*parts)
