"""Calibration of a classifier's confidence: expected calibration error (ECE) and the reliability bins behind it.

Definitions from Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks" (ICML 2017), section 2:
an image's confidence is its maximum softmax probability and it is correct when that class is its label; the
confidences are put into ``M = 15`` equal-width bins on [0, 1], and

    ECE = sum over bins B_m of |B_m| / n * |acc(B_m) - conf(B_m)|

with acc(B_m) the share of correct images in the bin and conf(B_m) their mean confidence (empty bins add nothing).
Bin m (1-based) is the interval ((m - 1) / M, m / M]: its upper edge is inclusive and its lower edge is not, as in
the paper's reference code (gpleiss/temperature_scaling, temperature_scaling.py ``_ECELoss``, ``n_bins=15``:
``confidences.gt(bin_lower) * confidences.le(bin_upper)``) and the implementations that copied it. Two details
differ from that code, neither on real scores in practice: a confidence of exactly 0, which it drops, falls in the
first bin here, so every image is counted; the edges are ``m / M`` in float64 (there ``torch.linspace`` in float32),
and the prediction is the argmax of the scores (there of the float32 softmax, which can round near-equal scores
to a tie), so that an image is correct here exactly when acc1 counts it.
"""

from __future__ import annotations

import numpy as np
import torch

ECE_BINS = 15


def bin_edges(bins: int = ECE_BINS) -> np.ndarray:
    """``bins + 1`` equal-width edges on [0, 1]: ``m / bins`` (exact in float64 at 0, 1 and every dyadic edge)."""
    return np.arange(bins + 1, dtype=np.float64) / bins


def confidences_and_correct(scores: torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each row's maximum softmax probability (float64) and whether its prediction is its label. The prediction is
    the argmax of ``scores`` themselves, as for acc1: a softmax in float32 can round near-equal scores to a tie."""
    scores = torch.as_tensor(scores).float()
    confidence = scores.softmax(dim=1).max(dim=1).values
    correct = scores.argmax(dim=1).numpy() == np.asarray(labels).astype(np.int64)
    return confidence.double().numpy(), correct


def reliability_bins(confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """One row per bin: ``bin`` (1-based), ``lower``, ``upper``, ``count``, ``accuracy`` and ``confidence`` (the
    bin's share correct and mean confidence; None for an empty bin) and ``gap`` (accuracy - confidence)."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if confidences.shape != correct.shape or confidences.ndim != 1:
        raise ValueError(f"confidences {confidences.shape} and correct {correct.shape} must be equal 1-d arrays")
    if len(confidences) and (np.isnan(confidences).any() or confidences.min() < 0 or confidences.max() > 1):
        raise ValueError("confidences must lie in [0, 1]")
    edges = bin_edges(bins)
    # side="left": the first edge >= c, so a confidence on an edge belongs to the bin below it, (lower, upper]
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, bins - 1)
    rows = []
    for m in range(bins):
        inside = index == m
        count = int(inside.sum())
        accuracy = float(correct[inside].mean()) if count else None
        confidence = float(confidences[inside].mean()) if count else None
        rows.append({"bin": m + 1, "lower": float(edges[m]), "upper": float(edges[m + 1]), "count": count,
                     "accuracy": accuracy, "confidence": confidence,
                     "gap": accuracy - confidence if count else None})
    return rows


def ece_from_bins(rows: list[dict]) -> float:
    """ECE of ``reliability_bins``' rows (nan when they hold no image)."""
    n = sum(row["count"] for row in rows)
    if n == 0:
        return float("nan")
    return float(sum(row["count"] / n * abs(row["gap"]) for row in rows if row["count"]))


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017) over ``bins`` equal-width bins (lower, upper]; see the module docstring."""
    return ece_from_bins(reliability_bins(confidences, correct, bins))
