"""The ``vitals`` deterioration model: a small 1D CNN over one hour of binned bedside vitals."""
from __future__ import annotations

from models.vitals.network import VitalsNet, VitalsNetConfig

__all__ = ["VitalsNet", "VitalsNetConfig"]
