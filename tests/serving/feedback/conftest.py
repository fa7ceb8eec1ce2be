"""Feedback tests use the web app of tests/serving/http and the clinical data of clinical_data.py."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / "http"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
