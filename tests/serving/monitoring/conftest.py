"""Monitoring tests use the web app of tests/serving/http and the clinical data of tests/serving/feedback."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / "http", HERE.parent / "feedback"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
