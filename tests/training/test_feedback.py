"""training.feedback: labels from clinicians' verdicts, the held-out split, the config of a retraining."""
from __future__ import annotations

import json

import pytest

from training.feedback import (CONFLICTING, DEFAULTS, LabelledCase, Rule, label_of, read_feedback,
                               retraining_config, split)

POSITIVE_CALL = {"positive": True, "probability": 0.9, "centres": [[0.25, 0.5]]}
NEGATIVE_CALL = {"positive": False, "probability": 0.1, "centres": []}


def verdict(kind: str, reason: str | None = None, point=None, reviewer: str = "reviewer-1", order: int = 1) -> dict:
    return {"verdict": kind, "reason": reason, "point": point, "reviewer": reviewer, "order": order}


@pytest.mark.parametrize("given, call, expected", [
    (verdict("agree"), POSITIVE_CALL, (1, ((0.25, 0.5),), Rule.AGREE)),
    (verdict("agree"), NEGATIVE_CALL, (0, (), Rule.AGREE)),
    (verdict("disagree", "false-positive"), POSITIVE_CALL, (0, (), Rule.FALSE_POSITIVE)),
    (verdict("disagree", "missed-finding", [0.7, 0.3]), NEGATIVE_CALL, (1, ((0.7, 0.3),), Rule.MISSED_FINDING)),
    (verdict("disagree", "missed-finding"), NEGATIVE_CALL, (1, (), Rule.MISSED_FINDING)),
    (verdict("disagree", "wrong-location", [0.6, 0.2]), POSITIVE_CALL, (1, ((0.6, 0.2),), Rule.WRONG_LOCATION)),
])
def test_each_verdict_gives_its_label(given, call, expected):
    assert label_of(given, call) == expected


@pytest.mark.parametrize("given, message", [
    (verdict("helpful"), "must be agree or disagree, 'helpful' is given"),
    (verdict("disagree", "too-bright"), "reason must be one of .* 'too-bright' is given"),
    (verdict("disagree", "missed-finding", [1.5, 0.2]), r"point must be \[x, y\] fractions in \[0, 1\]"),
])
def test_a_verdict_outside_the_rules_is_refused_naming_it(given, message):
    with pytest.raises(ValueError, match=message):
        label_of(given, NEGATIVE_CALL)


def write_export(folder, cases, model="tb"):
    (folder / "images").mkdir(parents=True)
    for case in cases:
        (folder / case["image"]).write_bytes(b"DICM")
    (folder / "feedback.json").write_text(json.dumps({"model": model, "deployed_version": "1.1.0",
                                                      "numCases": len(cases), "cases": cases}))


def case(name: str, call: dict, *verdicts: dict) -> dict:
    return {"image": f"images/{name}.dcm", "version": "1.1.0", "model_call": call, "verdicts": list(verdicts)}


def test_the_newest_verdict_per_reviewer_counts_and_reviewers_who_disagree_leave_the_case_out(tmp_path):
    write_export(tmp_path, [
        case("a", POSITIVE_CALL, verdict("agree", order=1), verdict("disagree", "false-positive", order=5)),
        case("b", POSITIVE_CALL, verdict("agree", order=2), verdict("disagree", "false-positive", reviewer="reviewer-2",
                                                                    order=3)),
        case("c", NEGATIVE_CALL, verdict("disagree", "missed-finding", [0.4, 0.3], order=4),
             verdict("disagree", "missed-finding", [0.5, 0.3], reviewer="reviewer-2", order=6)),
    ])
    found = read_feedback(tmp_path, "tb")
    assert found.deployed_version == "1.1.0" and found.skipped == {CONFLICTING: 1}
    assert [(c.image.name, c.label, c.centres, c.rule) for c in found.cases] == [
        ("a.dcm", 0, (), Rule.FALSE_POSITIVE), ("c.dcm", 1, ((0.5, 0.3),), Rule.MISSED_FINDING)]


def test_an_export_of_another_model_or_without_labels_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="medgate export-training --with-feedback"):
        read_feedback(tmp_path, "tb")
    write_export(tmp_path / "derm", [case("a", NEGATIVE_CALL, verdict("agree"))], model="derm")
    with pytest.raises(ValueError, match="feedback on 'derm', not on 'tb'"):
        read_feedback(tmp_path / "derm", "tb")
    assert read_feedback(tmp_path, "derm").cases[0].label == 0  # <out> given: <out>/<model> is read


def test_the_held_out_cases_are_stratified_by_label(tmp_path):
    cases = [LabelledCase(tmp_path / f"{i}.dcm", int(i < 4), (), Rule.AGREE) for i in range(10)]
    train, heldout = split(cases, 0.3, seed=0)
    assert sorted(c.label for c in heldout) == [0, 0, 1]  # round(0.3 * 6) negatives, round(0.3 * 4) positives
    assert len(train) == 7 and not {c.image for c in train} & {c.image for c in heldout}
    assert split(cases, 0.3, seed=0) == (train, heldout)
    one_each = [cases[0], cases[9]]
    assert split(one_each, 0.3, seed=0) == (one_each[::-1], [])  # never the only case of a label
    with pytest.raises(ValueError, match=r"heldout_fraction` must be in \[0, 1\), 1.0 is given"):
        split(cases, 1.0, seed=0)


def test_the_retraining_config_keeps_the_current_versions_data_and_takes_the_feedback_section():
    base = {"seed": 0, "data": {"source": "synthetic", "n_train": 2400, "n_val": 400, "n_test": 600},
            "input": {"size_px": 224},
            "train": {"batch_size": 16, "lr": 0.003, "max_steps": 400, "seconds": 90, "checkpoint_every": 50}}
    config = retraining_config(base, {"feedback": {"generated_train": 100}}, seed=3)
    assert config["seed"] == 3 and config["input"] == {"size_px": 224}
    assert config["data"] == {"source": "synthetic", "n_train": 100, "n_val": DEFAULTS["generated_val"],
                              "n_test": DEFAULTS["generated_test"]}
    assert config["train"]["lr"] == DEFAULTS["lr"] and config["train"]["seconds"] is None
    with pytest.raises(ValueError, match="`feedback.repeat` must be a positive integer, 0 is given"):
        retraining_config(base, {"feedback": {"repeat": 0}})


def test_retraining_from_a_tampered_current_version_is_refused_naming_it(tmp_path, capsys):
    import shutil

    from models.registry import DEFAULT_ROOT
    from serving.cli.main import main as medgate

    root = tmp_path / "models"
    shutil.copytree(DEFAULT_ROOT / "tb" / "1.0.0", root / "tb" / "1.0.0")
    shutil.copy(DEFAULT_ROOT / "tb" / "serving.json", root / "tb" / "serving.json")
    (root / "tb" / "1.0.0" / "model.onnx").write_bytes(b"not the model")
    write_export(tmp_path / "export", [case("a", NEGATIVE_CALL, verdict("agree"))])
    assert medgate(["train", "tb", "--from-feedback", str(tmp_path / "export"), "--registry", str(root)]) == 2
    out = capsys.readouterr().out
    assert out.startswith("medgate: model file") and "SHA-256" in out
