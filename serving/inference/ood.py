"""The out-of-distribution guard of a model replica: every reply of an image model that carries a
training-data statistic (``ood.json``, :mod:`models.ood`) gets ``"ood": {"score", "threshold",
"outside"}``, computed from the engine's ``features`` output, which is then dropped from the reply.

A volume model's reply gets one verdict per volume from the patches its sliding window ran
(:meth:`OodGuard.volume_verdict`).

The imaging pipeline and the HTTP uploads turn it into :attr:`models.finding.Finding.ood`; an input
outside the distribution makes no positive call (:attr:`models.finding.Finding.positive`).

A version without ``ood.json`` is served without a guard.  A version with one whose engine gives no
``features`` output (a TorchScript file exported before the output existed) is served too, but
logged at load and its replies say ``"ood": None``: the finding then carries no verdict.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from models.ood import FeatureStatistic, load_statistic
from models.registry import ModelManifest

log = logging.getLogger("medgate.serving")


class OodGuard:
    """Scores the ``features`` of a batch of replies against one version's statistic.

    Parameters
    ----------
    statistic
        The version's statistic (:func:`models.ood.load_statistic`).
    output_names
        The engine's outputs; without the statistic's ``feature_output`` every verdict is None.
    """

    def __init__(self, statistic: FeatureStatistic, output_names: list[str], label: str = "model") -> None:
        self.statistic = statistic
        self.output = statistic.feature_output
        self.available = self.output in output_names
        if not self.available:
            log.warning("%s carries an out-of-distribution statistic but its engine has no %r output "
                        "(outputs %s): its findings carry no out-of-distribution verdict", label, self.output,
                        output_names)

    @classmethod
    def of(cls, manifest: ModelManifest, output_names: list[str]) -> OodGuard | None:
        """The guard of ``manifest``'s version, or None when it carries no ``ood.json``.

        Raises
        ------
        ValueError
            The version's ``ood.json`` is unreadable (naming the file): such a version is not served.
        """
        statistic = load_statistic(manifest.folder)
        return None if statistic is None else cls(statistic, output_names, f"{manifest.name} {manifest.version}")

    def verdicts(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]] | None:
        """Remove ``features`` from the batched ``outputs`` and return one verdict per row (None
        where the engine gives no features)."""
        features = outputs.pop(self.output, None)
        if features is None:
            return None
        scores = self.statistic.scores(np.asarray(features).reshape(len(features), -1))
        return [self.statistic.verdict(s) for s in scores]

    def volume_verdict(self, features: list[np.ndarray] | None) -> dict[str, Any] | None:
        """The verdict of one volume from the ``features`` of the patches run on it (one array per
        engine call; None where the engine gives no features): its score is the largest patch
        score (``aggregate`` of the statistic, :mod:`training.ood_volume`), infinite when no patch
        was run (no search region found: nothing like the training volumes)."""
        if features is None:
            return None
        rows = [np.asarray(f).reshape(len(f), -1) for f in features if len(f)]
        if not rows:
            return self.statistic.verdict(float("inf"))
        return self.statistic.verdict(float(self.statistic.scores(np.concatenate(rows)).max()))
