"""Classification metrics against an independent implementation (torchmetrics, a test dependency): macro
precision, recall and F1 (classes absent from targets and predictions left out, as torchmetrics does), per-class
accuracy, the confusion matrix and the top-label calibration error."""

from __future__ import annotations

import pytest
import torch
import torchmetrics.functional.classification as tmf

from kdflow.evaluation.metrics import classification_metrics

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("case", ["balanced", "a class never seen", "confident and wrong"])
def test_the_metrics_equal_torchmetrics(case):
    g = torch.Generator().manual_seed(0)
    n, classes = 500, 7
    y = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g) + 2.5 * torch.nn.functional.one_hot(y, classes)
    if case == "a class never seen":  # class 6 neither in targets nor in predictions
        y = y.clamp(max=5)
        logits[:, 6] = -20
    if case == "confident and wrong":
        logits = 8 * torch.randn(n, classes, generator=g)
    got = classification_metrics(logits, y, classes, ece_bins=15)
    probs = logits.softmax(1)
    kw = {"num_classes": classes}
    assert got["precision_macro"] == pytest.approx(float(tmf.multiclass_precision(probs, y, average="macro", **kw)))
    assert got["recall_macro"] == pytest.approx(float(tmf.multiclass_recall(probs, y, average="macro", **kw)))
    assert got["f1_macro"] == pytest.approx(float(tmf.multiclass_f1_score(probs, y, average="macro", **kw)))
    per_class = tmf.multiclass_accuracy(probs, y, average=None, **kw).tolist()
    assert got["per_class_accuracy"] == pytest.approx(per_class)
    assert got["confusion_matrix"] == tmf.multiclass_confusion_matrix(probs, y, **kw).tolist()
    ece = float(tmf.multiclass_calibration_error(probs, y, n_bins=15, norm="l1", **kw))
    assert got["ece"] == pytest.approx(ece, abs=1e-6) and got["ece"] > 0
