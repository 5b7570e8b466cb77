"""One epoch of training: SGD steps over the training set in a seeded order, each on a freshly augmented (and maybe
mixed) batch, with a progress line every few batches."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.training.augment import affine_augment, mix_batch, pad_crop_augment, random_erase
from models.training.data import TrainingSet
from models.training.distill import OnnxTeacher, distillation_loss
from models.training.ema import WeightAverage
from models.training.loss import weighted_cross_entropy
from models.training.network import EmotionResNet50, set_shallow_frozen
from models.training.optimizer import learning_rate
from models.training.placement import Placement
from models.training.predict import PIXEL_MEAN, normalize
from models.training.recipe import TrainConfig


@dataclass
class Learner:
    """What a step runs and changes: the network (called through `forward`: torch.compile's wrapper of it, or
    itself), its optimizer, the EMA of its weights, the teacher it distils from, and the step count the schedule
    reads."""

    network: EmotionResNet50
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    ema: WeightAverage | None
    teacher: OnnxTeacher | None
    step: int


@dataclass(frozen=True)
class EpochTotals:
    loss: float  # mean training loss per face
    accuracy: float  # top-1 on the (augmented, mixed) training batches
    faces: int
    seconds: float


def train_epoch(config: TrainConfig, epoch: int, learner: Learner, data: TrainingSet, placement: Placement,
                eval_seconds: float) -> EpochTotals:
    """Epoch `epoch` (zero-based); `eval_seconds`, what the last PublicTest evaluation took, goes into the ETA."""
    device = placement.device
    # Per-epoch seeds from (seed, epoch) for the data order, augmentation, mixing and dropout (the global RNG): a
    # resumed run draws exactly what an unbroken one would, so no RNG state needs saving.
    generator = torch.Generator(device=device).manual_seed(config.seed * 1000 + epoch)
    torch.manual_seed(config.seed * 1000 + epoch + 1)
    mix_rng = np.random.default_rng((config.seed, epoch))
    if config.init == "imagenet":
        set_shallow_frozen(learner.network, frozen=epoch < config.freeze_epochs)
    order = torch.randperm(len(data), generator=generator, device=device)
    learner.network.train()
    steps_per_epoch = len(data) // config.batch_size
    started = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for batch_index in range(steps_per_epoch):
        index = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
        loss, logits = train_step(config, learner, data, index, placement, generator, mix_rng)
        target = data.labels[index]
        loss_sum += loss.detach().double() * len(target)
        correct += (logits.argmax(1) == target).sum()
        seen += len(target)
        done = batch_index + 1
        if config.progress_every and done % config.progress_every == 0 and done < steps_per_epoch:
            elapsed = time.perf_counter() - started
            per_step = elapsed / done
            remaining = (steps_per_epoch - done) * per_step + (config.epochs - epoch - 1) * (
                steps_per_epoch * per_step + eval_seconds)
            print(f"epoch {epoch + 1}/{config.epochs} batch {done}/{steps_per_epoch}: loss "
                  f"{float(loss_sum) / seen:.4f}, {seen / elapsed:.1f} images/s, ETA {clock(remaining)}", flush=True)
    return EpochTotals(float(loss_sum) / seen, int(correct) / seen, seen, time.perf_counter() - started)


def train_step(config: TrainConfig, learner: Learner, data: TrainingSet, index: Tensor, placement: Placement,
               generator: torch.Generator, mix_rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """One SGD step on the faces at `index`; returns the step's loss and logits."""
    pixels = augment(config, data.faces[index].float() / 255.0, generator)
    pixels, batch_targets = mix_batch(pixels, data.targets[index], config.mixup_alpha, config.cutmix_alpha,
                                      generator, mix_rng)
    batch = normalize(pixels).contiguous(memory_format=placement.memory_format)
    for group in learner.optimizer.param_groups:
        group["lr"] = learning_rate(config, learner.step, len(data) // config.batch_size)
    with torch.autocast(placement.device.type, dtype=torch.bfloat16, enabled=placement.bf16):
        logits = learner.forward(batch)
    loss = weighted_cross_entropy(logits.float(), batch_targets, data.class_weight)
    if learner.teacher is not None:
        soft = distillation_loss(logits.float(), learner.teacher.probs(pixels), config.distill_temperature)
        loss = (1.0 - config.distill_weight) * loss + config.distill_weight * soft
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    learner.optimizer.step()
    if learner.ema is not None:
        learner.ema.update(learner.network)
    learner.step += 1
    return loss, logits


def augment(config: TrainConfig, pixels: Tensor, generator: torch.Generator) -> Tensor:
    if config.augmentation == "pad-crop":
        pixels = pad_crop_augment(pixels, config.input_size, config.crop_padding, generator)
    else:
        pixels = affine_augment(pixels, config.input_size, generator)
    if config.erase_prob:
        pixels = random_erase(pixels, config.erase_prob, PIXEL_MEAN, generator)
    return pixels


def clock(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(max(seconds, 0.0))))
