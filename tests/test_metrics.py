import numpy as np
import pytest

from compress.errors import CompressError
from compress.metrics import compute_metrics


def test_classification_metrics_known_values():
    labels = np.array([1, 0, 1, 1, 0, 0])
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=float)  # preds 1 0 0 1 1 0
    m = compute_metrics(["accuracy", "f1", "matthews_correlation"], logits, labels)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # tp=2 fp=1 fn=1 -> precision 2/3, recall 2/3, f1 2/3
    assert m["f1"] == pytest.approx(2 / 3)
    # mcc = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4-1)/sqrt(3*3*3*3) = 1/3
    assert m["matthews_correlation"] == pytest.approx(1 / 3)
    assert list(m) == ["accuracy", "f1", "matthews_correlation"]


def test_regression_metrics_known_values():
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    preds = np.array([[2.0], [4.0], [6.0], [8.5]])
    m = compute_metrics(["pearson", "spearmanr"], preds, labels)
    assert m["spearmanr"] == pytest.approx(1.0)
    assert 0.99 < m["pearson"] < 1.0


def test_unknown_metric_is_an_error():
    with pytest.raises(CompressError, match="metric 'bleu' is unknown"):
        compute_metrics(["bleu"], np.zeros((2, 2)), np.zeros(2))


def test_correlations_of_one_row_are_nan_not_a_crash():
    """A one-row held-out slice of a regression task (``holdout_max: 1``): scipy's pearsonr raised ValueError (x and y
    must have length at least 2) after the first epoch's training; like spearmanr (and a constant prediction), the
    correlation is undefined: nan."""
    m = compute_metrics(["pearson", "spearmanr"], np.array([[0.5]]), np.array([3.0]))
    assert np.isnan(m["pearson"]) and np.isnan(m["spearmanr"])


def test_f1_is_the_positive_class_s_two_rows_correlate_and_kinds_do_not_mix():
    """F1 of the positive class (GLUE's), not a macro average (equal on a symmetric example); two rows are enough for
    a correlation; regression and classification metrics together are refused whichever comes first."""
    m = compute_metrics(["f1"], np.array([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=float), np.array([1, 1, 1, 0]))
    assert m["f1"] == pytest.approx(0.8)  # tp=2 fp=0 fn=1 (macro would be 0.7333)
    assert compute_metrics(["pearson"], np.array([[0.0], [1.0]]), np.array([0.0, 1.0]))["pearson"] == pytest.approx(1)
    for names in (["accuracy", "pearson"], ["pearson", "accuracy"]):
        with pytest.raises(CompressError, match="regression and classification metrics mixed"):
            compute_metrics(names, np.zeros((2, 2)), np.zeros(2))
