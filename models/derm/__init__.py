"""The ``derm`` model: 7-class dermoscopy classifier (HAM10000 classes) with temperature scaling."""
from __future__ import annotations

from models.derm.calibration import CalibratedClassifier, fit_temperature
from models.derm.network import CLASSES, DermClassifier, DermNetConfig, build_derm_network
from models.derm.preprocess import to_derm_input, to_derm_input_batch

__all__ = ["CLASSES", "CalibratedClassifier", "DermClassifier", "DermNetConfig", "build_derm_network",
           "fit_temperature", "to_derm_input", "to_derm_input_batch"]
