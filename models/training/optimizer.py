"""SGD with Nesterov momentum, and its schedule: a linear warm-up to the batch-scaled peak rate, then cosine to zero."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.training.recipe import TrainConfig, peak_lr


def build_optimizer(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in network.parameters():
        # Weight decay on BN scales and biases only hurts; the usual exclusion.
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr(config), momentum=0.9, nesterov=True,
    )


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    total = config.epochs * steps_per_epoch
    peak = peak_lr(config)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
