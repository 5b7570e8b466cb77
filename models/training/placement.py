"""Where a run computes and in what arithmetic: the device, bf16 autocast or fp32, and the tensors' memory format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from fervid.errors import INVALID_REQUEST, FervidError
from models.cpu_features import read_cpu_features
from models.training.precision import choose_precision
from models.training.recipe import TrainConfig

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    bf16: bool  # autocast in bf16 (models.training.precision.choose_precision says when)
    memory_format: torch.memory_format

    def place(self, module: ModuleT) -> ModuleT:
        return module.to(device=self.device, memory_format=self.memory_format)  # type: ignore[call-overload]


def choose_placement(config: TrainConfig) -> Placement:
    """The run's placement, said on stdout with the reason for its arithmetic; also sets torch's thread count."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FervidError("--device cuda, but torch sees no CUDA GPU here; train with --device cpu",
                          code=INVALID_REQUEST)
    if config.threads:
        torch.set_num_threads(config.threads)
    precision = choose_precision(config.precision, device.type, read_cpu_features())
    print(f"precision: {precision.name} autocast on {device.type}, because {precision.reason}", flush=True)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return Placement(device, precision.bf16, memory_format)
