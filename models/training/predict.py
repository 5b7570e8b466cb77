"""How training's networks see a face and what they say about it: the runtime's resize and grey-level normalisation
in torch, and probabilities with the test-time views the runtime and `fervid eval` use."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.training.augment import tencrop_views

# Grey-level normalisation, written into the exported model's preprocess metadata.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25
NATIVE_SIZE = 48  # FER-2013 faces are 48x48


def to_input(faces: np.ndarray | Tensor, size: int) -> Tensor:
    """Evaluation preprocessing: the same resize and normalisation the runtime applies."""
    batch = torch.as_tensor(faces, dtype=torch.float32).unsqueeze(1) / 255.0
    if batch.shape[-1] != size:
        batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return normalize(batch)


def normalize(batch: Tensor) -> Tensor:
    return ((batch - PIXEL_MEAN) / PIXEL_STD).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_probs(network: nn.Module, faces: np.ndarray, size: int, tta: bool, bf16: bool,
                  batch_size: int = 256, *, tencrop: bool = False, device: torch.device | None = None) -> np.ndarray:
    """Probabilities of (N, 48, 48) faces: of the face alone, averaged with its mirror (`tta`), or over ten views
    (`tencrop`: five shifts, each mirrored; ten passes a face)."""
    network.eval()
    device = device or torch.device("cpu")
    out = []
    for start in range(0, len(faces), batch_size):
        batch = to_input(faces[start : start + batch_size], size).to(device)
        views = tencrop_views(batch) if tencrop else [batch, torch.flip(batch, dims=[3])] if tta else [batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            probs = torch.stack([F.softmax(network(view).float(), dim=1) for view in views]).mean(dim=0)
        out.append(probs.float().cpu().numpy())
    return np.concatenate(out)
