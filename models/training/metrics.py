"""Classification metrics for the emotion classifier: accuracy, macro-F1, per-class scores, confusion matrix."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fervid.labels import EMOTIONS


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int  # true faces of this class


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion: NDArray[np.int64]  # rows: true class, columns: predicted class

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy, "macro_f1": self.macro_f1, "count": self.count,
            "per_class": {name: vars(scores) for name, scores in self.per_class.items()},
            "confusion": self.confusion.tolist(),
        }


def confusion_matrix(labels: NDArray[np.int64], predictions: NDArray[np.int64], classes: int) -> NDArray[np.int64]:
    """Counts of (true, predicted) pairs; rows are the true class."""
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predictions.shape[0]} predictions")
    if labels.size and (min(labels.min(), predictions.min()) < 0 or max(labels.max(), predictions.max()) >= classes):
        raise ValueError(f"class indices must lie in 0..{classes - 1}")
    flat = np.bincount(labels.astype(np.int64) * classes + predictions.astype(np.int64), minlength=classes * classes)
    return flat.reshape(classes, classes).astype(np.int64)


def metrics_from_confusion(confusion: NDArray[np.int64],
                           class_names: tuple[str, ...] = EMOTIONS) -> ClassificationMetrics:
    """Per-class and overall scores; a class never predicted (or absent) scores 0, as scikit-learn's zero_division=0."""
    true_positive = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    support = confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    total = confusion.sum()
    # Macro-F1 over the classes that occur (as truth or prediction), as scikit-learn's default; all 7 do on FER-2013.
    occurring = (support > 0) | (predicted > 0)
    per_class = {
        name: ClassScores(precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]),
                          support=int(support[i]))
        for i, name in enumerate(class_names)
    }
    return ClassificationMetrics(
        accuracy=float(true_positive.sum() / total) if total else 0.0,
        macro_f1=float(f1[occurring].mean()) if occurring.any() else 0.0,
        per_class=per_class, confusion=confusion,
    )


def classification_metrics(labels: NDArray[np.int64], probs: NDArray[np.float32],
                           class_names: tuple[str, ...] = EMOTIONS) -> ClassificationMetrics:
    """Top-1 metrics of (N, classes) probabilities (or scores) against (N,) true class indices."""
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"expected (N, {len(class_names)}) probabilities, got {probs.shape}")
    predictions = probs.argmax(axis=1)
    return metrics_from_confusion(confusion_matrix(labels, predictions, len(class_names)), class_names)


@dataclass(frozen=True)
class PairedComparison:
    """Two models scored on the same faces. Only the faces exactly one of them gets right can tell them apart;
    McNemar's exact test asks whether those split more unevenly than chance would."""

    faces: int
    accuracy: float
    other_accuracy: float
    only_this_right: int
    only_other_right: int
    p_value: float  # two-sided exact McNemar (binomial on the discordant faces)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided p-value of the exact McNemar test: P(a split at least this uneven | each side equally likely)."""
    discordant = only_a + only_b
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def paired_comparison(labels: NDArray[np.int64], probs: NDArray[np.float32],
                      other_probs: NDArray[np.float32]) -> PairedComparison:
    right = probs.argmax(axis=1) == labels
    other_right = other_probs.argmax(axis=1) == labels
    only_this, only_other = int((right & ~other_right).sum()), int((other_right & ~right).sum())
    return PairedComparison(faces=len(labels), accuracy=float(right.mean()), other_accuracy=float(other_right.mean()),
                            only_this_right=only_this, only_other_right=only_other,
                            p_value=mcnemar_exact_p(only_this, only_other))


def plot_confusion(confusion: NDArray[np.int64], out: Path, title: str,
                   class_names: tuple[str, ...] = EMOTIONS) -> Path:
    """A PNG heat-map of the row-normalised confusion matrix, annotated with recall fractions and counts."""
    # A bare Figure renders with Agg and leaves pyplot's global state (and any display) alone.
    from matplotlib.figure import Figure

    support = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    figure = Figure(figsize=(7.5, 6.5), dpi=110)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=40, ha="right")
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            colour = "white" if rates[row, column] > 0.5 else "black"
            axes.text(column, row, f"{rates[row, column]:.2f}\n{confusion[row, column]}", ha="center", va="center",
                      fontsize=7, color=colour)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
