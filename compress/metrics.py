"""Task metrics as GLUE defines them, computed with scikit-learn / scipy.

Names follow GLUE (and the `evaluate` library): accuracy, f1, matthews_correlation, pearson, spearmanr.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Sequence

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from compress.errors import CompressError
from compress.tasks import METRIC_NAMES, REGRESSION_METRICS

log = logging.getLogger(__name__)


def _pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    """Pearson's r; nan for fewer than two rows (undefined, as spearmanr and a constant prediction give), where scipy's
    pearsonr raises ValueError (a one-row held-out slice crashed `fit` after its first epoch)."""
    return pearsonr(preds, labels)[0] if len(preds) >= 2 else float("nan")


METRICS = {
    "accuracy": lambda preds, labels: accuracy_score(labels, preds),
    "f1": lambda preds, labels: f1_score(labels, preds),
    "matthews_correlation": lambda preds, labels: matthews_corrcoef(labels, preds),
    "pearson": _pearson,
    "spearmanr": lambda preds, labels: spearmanr(preds, labels)[0],
}
assert tuple(METRICS) == METRIC_NAMES, "compress.tasks.METRIC_NAMES must list every metric"


def compute_metrics(names: Sequence[str], logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics from raw model outputs: argmax for classification, the single output for regression (``names`` all
    of one kind: `compress.tasks.task_spec` checks a recipe's)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    regression = any(n in REGRESSION_METRICS for n in names)
    if regression and not all(n in REGRESSION_METRICS for n in names):
        raise CompressError(f"metrics {list(names)}: regression and classification metrics mixed")
    preds = logits.reshape(-1) if regression else logits.argmax(-1)
    out = {}
    for name in names:
        if name not in METRICS:
            raise CompressError(f"metric {name!r} is unknown (known: {', '.join(METRICS)})")
        # constant labels or predictions: nan (the stages say so in one line, `warn_undefined`, the quantize guard in
        # its own; a report or card cell reads - / undefined), not scipy's warning with its source line, once per call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            out[name] = float(METRICS[name](preds, labels))
    return out


def warn_undefined(who: str, metrics: dict, dev_consequence: str = "its retention is not measured and no int8 "
                                                                  "guard can judge it") -> None:
    """One warning line per split of a stage's ``metrics`` (``dev``, and ``test``: a labelled test split) with a nan
    score: a pearson/spearmanr of constant labels or predictions, or of under 2 rows (`compute_metrics` silences
    scipy's own warning)."""
    for split, where, consequence in (("dev", "dev", dev_consequence),
                                      ("test", "the labelled test split", "the test column reads -")):
        names = [k for k, v in (metrics.get(split) or {}).items() if v is None or not math.isfinite(v)]
        if names:
            log.warning("%s: its %s on %s %s undefined (nan: the labels or its predictions are constant there, or it "
                        "has under 2 rows): %s", who, " and ".join(names), where, "is" if len(names) == 1 else "are",
                        consequence)
