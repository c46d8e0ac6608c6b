"""Evaluation metrics of the fine-tune stage, in plain numpy."""

from __future__ import annotations

import numpy as np


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((y == p).mean()) if len(y) else 0.0


def macro_f1(y: np.ndarray, p: np.ndarray, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = np.sum((p == c) & (y == c))
        fp, fn = np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def f1_binary(y: np.ndarray, p: np.ndarray) -> float:
    tp = np.sum((p == 1) & (y == 1))
    denom = 2 * tp + np.sum((p == 1) & (y == 0)) + np.sum((p == 0) & (y == 1))
    return float(2 * tp / denom) if denom else 0.0


def mcc(y: np.ndarray, p: np.ndarray, num_classes: int) -> float:
    """Matthews correlation, multi-class (Gorodkin's R_K)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(cm, (y, p), 1)
    t, pk, c, s = cm.sum(1), cm.sum(0), np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - pk @ pk) * (s * s - t @ t))
    return float((c * s - t @ pk) / denom) if denom else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


def classification_metrics(y, p, num_classes: int) -> dict:
    y, p = np.asarray(y), np.asarray(p)
    return {"accuracy": accuracy(y, p), "macro_f1": macro_f1(y, p, num_classes), "mcc": mcc(y, p, num_classes)}


def regression_metrics(y, pred, binary=None, threshold: float = 3.0) -> dict:
    """Pearson and Spearman; with binary labels also F1 of ``pred >= threshold`` (KLUE-STS)."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    out = {"pearson": pearson(pred, y), "spearman": spearman(pred, y)}
    if binary is not None:
        out["f1"] = f1_binary(np.asarray(binary), (pred >= threshold).astype(int))
    return out
