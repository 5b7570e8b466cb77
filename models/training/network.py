"""ResNet50 in the torchvision state-dict layout, with the fervid head (GAP, dropout 0.2, 7-way linear).

Two kinds of stem feed the same bottleneck stages: torchvision's (7x7 stride 2 + max-pool, for ImageNet weights and
their 197-224 px inputs) and a stem for small faces (3x3 stride 1 at the native 48 px, with or without the max-pool),
which keeps 48x48 (or 24x24) maps at layer1 where the ImageNet stem leaves 12x12 of a 48 px face.

Imports torch: only training, export and (lazily) the torch-cuda backend use this module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.spec import LEGACY_STEM, STEMS

STAGE_BLOCKS = (3, 4, 6, 3)  # ResNet50
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
STEM_WIDTH = 64


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # torchvision's "ResNet v1.5": the stride sits on the 3x3 convolution.
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class EmotionResNet50(nn.Module):
    """ResNet50 whose parameter names match torchvision's, so an ImageNet state dict loads directly."""

    def __init__(self, num_classes: int = 7, in_channels: int = 1, dropout: float = 0.2,
                 stem: str = LEGACY_STEM) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, not {stem!r}")
        self.stem = stem
        # Same names in every stem (conv1, bn1, maxpool), so the state-dict layout and ONNX names stay torchvision's.
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if stem == "small" else nn.MaxPool2d(3, stride=2, padding=1)
        channels = STEM_WIDTH
        stages = []
        for index, (blocks, width) in enumerate(zip(STAGE_BLOCKS, STAGE_WIDTHS, strict=True)):
            layers = []
            for block in range(blocks):
                stride = 2 if block == 0 and index > 0 else 1
                layers.append(Bottleneck(channels, width, stride))
                channels = width * EXPANSION
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each block: every residual branch starts as identity, which
        # stabilises from-scratch training.
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Returns logits; softmax is applied by the exported inference graph."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


def load_imagenet_state_dict(network: EmotionResNet50, state_dict: dict[str, Tensor]) -> list[str]:
    """Loads a torchvision ResNet50 state dict into an `imagenet`-stem network; returns the keys left at their fresh
    values.

    The 7-way head never comes from ImageNet, and a 3-channel stem is folded into the network's
    input channels by summing over RGB (grey = R = G = B gives the same response).
    """
    if network.stem != "imagenet":
        raise ValueError(f"ImageNet weights need the imagenet stem, not {network.stem!r}")
    own = network.state_dict()
    loaded: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key not in own:
            continue
        if key == "conv1.weight" and value.shape[1] != own[key].shape[1]:
            value = value.sum(dim=1, keepdim=True).repeat(1, own[key].shape[1], 1, 1) / own[key].shape[1]
        if value.shape != own[key].shape:
            raise ValueError(f"{key}: state dict has shape {tuple(value.shape)}, network {tuple(own[key].shape)}")
        loaded[key] = value
    network.load_state_dict(loaded, strict=False)
    return sorted(set(own) - set(loaded))


# Stages frozen in the first phase of an ImageNet fine-tune (the published recipe freezes the shallow layers).
SHALLOW_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.")


def set_shallow_frozen(network: EmotionResNet50, frozen: bool) -> None:
    for name, parameter in network.named_parameters():
        if name.startswith(SHALLOW_PREFIXES):
            parameter.requires_grad_(not frozen)
