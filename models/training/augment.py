"""Training-time augmentation and test-time views, as torch ops on whatever device the batch lives on (the CPU, or a
GPU holding the whole training set), drawn from a generator on that device so that a run is reproducible.

Batches are (B, 1, H, W) grey faces in [0, 1] unless said otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("affine", "pad-crop")
# Random erasing as Zhong et al. 2020 (and torchvision's RandomErasing): 2-33 % of the face, aspect 0.3-3.3.
ERASE_AREA = (0.02, 0.33)
ERASE_ASPECT = (0.3, 1 / 0.3)


def _uniform(count: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(count, generator=generator, device=device) * (high - low) + low


def affine_augment(batch: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Random resized crop, flip, rotation, brightness/contrast, resampled to `size` (the imagenet-stem recipe)."""
    count, device = batch.shape[0], batch.device

    def uniform(low: float, high: float) -> Tensor:
        return _uniform(count, low, high, generator, device)

    scale = torch.sqrt(uniform(0.75, 1.0))  # side fraction of the crop (area 75-100 %)
    aspect = torch.exp(uniform(math.log(0.9), math.log(1.1)))
    angle = uniform(-12.0, 12.0) * math.pi / 180.0
    flip = torch.where(torch.rand(count, generator=generator, device=device) < 0.5, -1.0, 1.0)
    shift_x = uniform(-1.0, 1.0) * (1.0 - scale)
    shift_y = uniform(-1.0, 1.0) * (1.0 - scale)
    sx, sy = scale * torch.sqrt(aspect) * flip, scale / torch.sqrt(aspect)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([sx * cos, -sy * sin, shift_x], 1), torch.stack([sx * sin, sy * cos, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, [count, 1, size, size], align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(0.7, 1.3).view(-1, 1, 1, 1)
    brightness = uniform(-0.15, 0.15).view(-1, 1, 1, 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def _crop(padded: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """Per face b, padded[b, :, top[b]:top[b]+size, left[b]:left[b]+size]."""
    steps = torch.arange(size, device=padded.device)
    rows, cols = (top[:, None] + steps)[:, :, None], (left[:, None] + steps)[:, None, :]
    faces = torch.arange(padded.shape[0], device=padded.device)[:, None, None]
    return padded[faces, 0, rows, cols].unsqueeze(1)


def pad_crop_augment(batch: Tensor, size: int, padding: int, generator: torch.Generator) -> Tensor:
    """The small-stem recipe (CIFAR's): pad the face by `padding` px (edges repeated), take a random `size` crop of
    the padded face, flip half of them. No resampling: the crop keeps the face's own pixels."""
    count, side = batch.shape[0], batch.shape[-1]
    span = side + 2 * padding - size
    if span < 0:
        raise ValueError(f"a {size} px crop does not fit a {side} px face padded by {padding}")
    padded = F.pad(batch, (padding, padding, padding, padding), mode="replicate")
    top = torch.randint(0, span + 1, (count,), generator=generator, device=batch.device)
    left = torch.randint(0, span + 1, (count,), generator=generator, device=batch.device)
    out = _crop(padded, top, left, size)
    flip = torch.rand(count, generator=generator, device=batch.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def random_erase(batch: Tensor, probability: float, fill: float, generator: torch.Generator) -> Tensor:
    """With `probability` per face, one rectangle of it set to `fill` (the normalisation mean: 0 once normalised)."""
    count, height, width = batch.shape[0], batch.shape[-2], batch.shape[-1]
    device = batch.device
    area = _uniform(count, *ERASE_AREA, generator, device) * height * width
    aspect = torch.exp(_uniform(count, math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), generator, device))
    tall = torch.sqrt(area * aspect).round().clamp(1, height)
    wide = torch.sqrt(area / aspect).round().clamp(1, width)
    top = (torch.rand(count, generator=generator, device=device) * (height - tall + 1)).floor()
    left = (torch.rand(count, generator=generator, device=device) * (width - wide + 1)).floor()
    chosen = torch.rand(count, generator=generator, device=device) < probability
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + tall)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + wide)[:, None, None]))
    return batch.masked_fill((inside & chosen[:, None, None]).unsqueeze(1), fill)


def mix_batch(batch: Tensor, targets: Tensor, mixup_alpha: float, cutmix_alpha: float, generator: torch.Generator,
              rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of the batch with a shuffled copy of itself, targets
    mixed in the same proportion (each still sums to one). With both alphas set, each batch draws one of the two;
    with neither, the batch is returned as is. `rng` draws the Beta proportions (torch has no seeded Beta)."""
    kinds = [kind for kind, alpha in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if alpha > 0]
    if not kinds:
        return batch, targets
    kind = kinds[int(rng.integers(len(kinds)))]
    partner = torch.randperm(batch.shape[0], generator=generator, device=batch.device)
    if kind == "mixup":
        keep = float(rng.beta(mixup_alpha, mixup_alpha))
        mixed = keep * batch + (1.0 - keep) * batch[partner]
    else:
        height, width = batch.shape[-2], batch.shape[-1]
        cut = math.sqrt(1.0 - float(rng.beta(cutmix_alpha, cutmix_alpha)))
        centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(centre_y - int(cut * height) // 2, 0), min(centre_y + int(cut * height) // 2, height)
        left, right = max(centre_x - int(cut * width) // 2, 0), min(centre_x + int(cut * width) // 2, width)
        mixed = batch.clone()
        mixed[..., top:bottom, left:right] = batch[partner][..., top:bottom, left:right]
        keep = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area actually pasted
    return mixed, keep * targets + (1.0 - keep) * targets[partner]


# Ten-crop shift: 4 px of a 48 px face, the padding the small-stem recipe trains with.
TENCROP_SHIFT = 4 / 48


def tencrop_views(batch: Tensor) -> list[Tensor]:
    """Ten test-time views of a (B, C, S, S) network input: the face shifted to the four corners and the centre of
    its padded self (as pad-crop training shifts it), each also mirrored."""
    size = batch.shape[-1]
    shift = max(1, round(size * TENCROP_SHIFT))
    padded = F.pad(batch, (shift, shift, shift, shift), mode="replicate")
    corners = [(0, 0), (0, 2 * shift), (2 * shift, 0), (2 * shift, 2 * shift), (shift, shift)]
    crops = [padded[..., top : top + size, left : left + size] for top, left in corners]
    return crops + [torch.flip(crop, dims=[3]) for crop in crops]
