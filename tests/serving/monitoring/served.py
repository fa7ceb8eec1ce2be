"""Generated served results for monitoring tests: SR rows of a model version at a site, scores and
input features drawn from the version's reference (in distribution) or shifted away from it."""
from __future__ import annotations

import math

import numpy as np
from pydicom.uid import generate_uid

from models.reference import ModelReference


def draw(distribution, n: int, rng: np.random.Generator, shift_to_bin: int | None = None) -> np.ndarray:
    """``n`` values spread over ``distribution``'s bins as its counts are (or all in one bin),
    each uniform inside its bin (an open outer bin: within one neighbour's width)."""
    edges, counts = np.asarray(distribution.edges), np.asarray(distribution.counts, dtype=float)
    p = counts / counts.sum() if shift_to_bin is None else np.eye(len(counts))[shift_to_bin]
    bins = rng.choice(len(counts), size=n, p=p)
    finite = edges[np.isfinite(edges)]
    width = float(np.diff(finite).mean()) if len(finite) > 1 else 1.0
    lo = np.where(np.isfinite(edges[:-1]), edges[:-1], edges[1:] - width)[bins]
    hi = np.where(np.isfinite(edges[1:]), edges[1:], edges[:-1] + width)[bins]
    hi = np.where(hi > lo, hi, lo + 1e-9)
    return lo + rng.random(n) * (hi - lo) * (1 - 1e-9)


def add_results(store, reference: ModelReference, site: str | None, n: int, seed: int = 0,
                score_bin: int | None = None, input_bin: int | None = None) -> list[str]:
    """``n`` single-image studies judged by the reference's version at ``site`` (an AE title, or
    None: uploads); returns their study UIDs."""
    rng = np.random.default_rng(seed)
    scores = draw(reference.score, n, rng, score_bin)
    features = {k: draw(d, n, rng, None if input_bin is None else min(input_bin, len(d.counts) - 1))
                for k, d in reference.inputs.items()}
    studies = []
    for i in range(n):
        study, sop = generate_uid(), generate_uid()
        if site is not None:
            store.add_instance({"sop_instance_uid": sop, "study_uid": study, "series_uid": generate_uid(),
                                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1", "modality": "DX",
                                "path": f"/nowhere/{sop}.dcm", "calling_ae": site})
        score = float(scores[i])
        summary = {"model": reference.model, "version": reference.version, "sop_instance_uid": generate_uid(),
                   "findings": [{"probability": score, "positive": score >= reference.threshold, "location": None,
                                 "point": None, "source": sop}],
                   "inputs": {k: float(v[i]) for k, v in features.items() if math.isfinite(v[i])}}
        if site is None:
            summary["source"] = "upload"
        store.add_result(study, "sr", f"/nowhere/{study}/SR.dcm", summary)
        studies.append(study)
    return studies


def add_verdicts(feedback, store, studies: list[str], model: str, version: str, agree: int, site: str | None,
                 who: str = "dr test", at: float | None = None) -> None:
    """A radiologist's verdict on the (only) finding of each study: the first ``agree`` agree, the
    others disagree (false positive)."""
    import time

    from serving.feedback.records import Feedback, feedback_id
    from serving.feedback.service import finding_observation_id

    at = time.time() if at is None else at
    items = []
    for i, study in enumerate(studies):
        source = store.results_of(study)[0].summary["findings"][0]["source"]
        target = f"Observation/{finding_observation_id(study, model, version, 1, source)}"
        agreed = i < agree
        items.append(Feedback(feedback_id(target, who, at + i), "finding", "agree" if agreed else "disagree", model,
                              version, target, who, "radiologist", at + i, study_uid=study, site=site,
                              reason=None if agreed else "false-positive"))
    feedback.add(items)
