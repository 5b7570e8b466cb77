"""An exponential moving average of a network's weights (Polyak averaging), the candidate a run evaluates and keeps
when `--ema-decay` is on."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """`network` holds the average. BatchNorm statistics are averaged like the weights; step counters are copied."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"an EMA decay must lie in (0, 1), not {decay}")
        self.decay = decay
        self.updates = 0
        self.network = copy.deepcopy(network).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        self.updates += 1
        # A short memory at first, so the average is not dominated by the random initialisation (timm's warm-up).
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for average, current in zip(self.network.state_dict().values(), network.state_dict().values(), strict=True):
            if average.is_floating_point():
                average.mul_(decay).add_(current.detach(), alpha=1.0 - decay)
            else:
                average.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "network": self.network.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.network.load_state_dict(state["network"])
