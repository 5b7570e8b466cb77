"""The training loss: cross-entropy against per-face target distributions, with class weights."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def class_weights(labels: np.ndarray, classes: int) -> Tensor:
    """Square-root inverse frequency: lifts the rare `disgust` class without letting it dominate."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = np.sqrt(counts.max() / np.maximum(counts, 1.0))
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def training_targets(labels: np.ndarray, ferplus_shares: np.ndarray | None, ferplus_weight: float,
                     label_smoothing: float, classes: int) -> Tensor:
    """Per face, the target distribution: the label, blended with FER+ vote shares where the face has any, smoothed."""
    targets = np.eye(classes, dtype=np.float32)[labels]
    if ferplus_shares is not None:
        voted = ferplus_shares.sum(axis=1) > 0
        targets[voted] = (1.0 - ferplus_weight) * targets[voted] + ferplus_weight * ferplus_shares[voted]
    return torch.from_numpy((1.0 - label_smoothing) * targets + label_smoothing / classes)


def weighted_cross_entropy(logits: Tensor, targets: Tensor, class_weight: Tensor) -> Tensor:
    """Cross-entropy against target distributions, each class's term scaled by its weight and the sum normalised by
    the weight the targets carry: for one-hot targets, exactly PyTorch's class-weighted cross-entropy."""
    weighted = targets * class_weight
    return -(weighted * F.log_softmax(logits, dim=1)).sum() / weighted.sum()
