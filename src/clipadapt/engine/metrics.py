"""Classification metrics, in CLIP_benchmark's vocabulary: acc1, acc5, mean per-class accuracy; and the expected
calibration error of the softmax confidences (``engine.calibration``)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from clipadapt.engine.calibration import confidences_and_correct, expected_calibration_error

# sklearn is imported where it is used: it costs a second and a half at start-up, in every process


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def classification_metrics(scores: torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[str, float | int]:
    """``{"acc1", "acc5", "mean_per_class_acc", "ece", "n"}``; acc5 is top-min(5, classes); ece is the expected
    calibration error of ``scores``' softmax over 15 bins (Guo et al. 2017, ``engine.calibration``)."""
    from sklearn.metrics import balanced_accuracy_score

    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    predictions = scores.argmax(dim=1).numpy()
    with warnings.catch_warnings():  # predicting a class that has no test images is allowed
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        mean_per_class = float(balanced_accuracy_score(labels_t.numpy(), predictions))
    return {
        "acc1": topk_accuracy(scores, labels_t, 1),
        "acc5": topk_accuracy(scores, labels_t, 5),
        "mean_per_class_acc": mean_per_class,  # over the classes present in ``labels``
        "ece": finite_ece(scores, labels_t),
        "n": int(len(labels_t)),
    }


def confusion(scores: torch.Tensor, labels: np.ndarray, num_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(labels), scores.argmax(dim=1).numpy(), labels=list(range(num_classes)))


def per_class_rows(scores: torch.Tensor, labels: np.ndarray, classnames: list[str]) -> list[dict]:
    """One row per class: precision, recall (= per-class accuracy), f1, support."""
    from sklearn.metrics import classification_report

    report = classification_report(
        np.asarray(labels), scores.argmax(dim=1).numpy(), labels=list(range(len(classnames))),
        target_names=[f"{i}" for i in range(len(classnames))], output_dict=True, zero_division=0,
    )
    rows = []
    for index, name in enumerate(classnames):
        entry = report[str(index)]
        rows.append({"class_index": index, "class": name, "precision": entry["precision"],
                     "recall": entry["recall"], "f1": entry["f1-score"], "support": int(entry["support"])})
    return rows


def finite_ece(scores: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """ECE over the rows with finite scores (a diverged model's NaN rows are left out, as model selection leaves
    them out); nan when no row is finite."""
    confidence, correct = confidences_and_correct(scores, labels)
    finite = np.isfinite(confidence)
    return expected_calibration_error(confidence[finite], correct[finite]) if finite.any() else float("nan")
