"""No shipped model is named in the generic serving code: how a model is served is read from its
folder's serving spec (models/spec.py), so adding one touches no file under serving/.

Every string literal of ``serving/`` (docstrings aside) equal to a registered model's name is
reported, but for the uses listed below that name something else.
"""
from __future__ import annotations

import ast
from pathlib import Path

from models.registry import ModelRegistry

SERVING = Path(__file__).resolve().parents[2] / "serving"
#: (file under serving/, literal) -> why it is not a model name.
NOT_A_MODEL = {
    ("http/ward.py", "vitals"): "the ward board's JSON key of a patient's vital signs",
}
#: Uses still to move to the serving spec, by the owner of the file.
PENDING: dict[tuple[str, str], str] = {}  # (file, name) -> why it is still there


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def model_names_in_serving() -> list[tuple[str, int, str]]:
    names = set(ModelRegistry().names())
    hits = []
    for path in sorted(SERVING.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
                    and id(node) not in docstrings):
                hits.append((path.relative_to(SERVING).as_posix(), node.lineno, node.value))
    return hits


def test_no_model_is_named_in_the_generic_serving_code():
    named = [(f, line, name) for f, line, name in model_names_in_serving()
             if (f, name) not in NOT_A_MODEL and (f, name) not in PENDING]
    assert named == [], f"model names in serving/ (put them in the model's serving spec): {named}"
