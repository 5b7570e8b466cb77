"""The network a run starts from (`--init`): fresh weights, torchvision's ImageNet weights, or a network of an exported
fervid model."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fervid.labels import EMOTIONS
from models.training.network import EmotionResNet50, load_imagenet_state_dict
from models.training.predict import to_input
from models.training.quantize import draw_faces
from models.training.recipe import TrainConfig
from models.training.warm_start import warm_start_network

# Training faces whose statistics restore the BatchNorms an INT8 model folded away (`--init model`).
WARM_START_FACES = 2048


def build_network(config: TrainConfig, train_faces: np.ndarray | None = None,
                  data_sha256: str = "") -> EmotionResNet50:
    """The network training starts from (`config` resolved); for `--init model` also records its origin in `config`."""
    network = EmotionResNet50(num_classes=len(EMOTIONS), in_channels=1, stem=config.stem)
    if config.init == "model":
        if config.init_model is None or train_faces is None:
            raise SystemExit("--init model needs --init-model PATH (a `fervid export` or `fervid quantize` output)")
        calibration = to_input(draw_faces(train_faces, WARM_START_FACES), config.input_size).contiguous()
        network, source = warm_start_network(config.init_model, config.init_member, config.input_size, data_sha256,
                                             calibration)
        config.prior_init, config.prior_epochs = source.init, source.epochs
        print(f"warm start: network {config.init_member} of {config.init_model} ({source.init}, "
              f"{source.epochs} epochs, {source.stem} stem)", flush=True)
    elif config.init == "imagenet":
        if not config.imagenet_weights:
            raise SystemExit("--init imagenet needs --imagenet-weights PATH_OR_URL (a torchvision ResNet50 state dict)")
        fresh = load_imagenet_state_dict(network, load_imagenet_weights(config.imagenet_weights))
        print(f"imagenet start: {len(fresh)} tensors keep fresh values ({', '.join(fresh[:4])}...)", flush=True)
    elif config.init != "scratch":
        raise SystemExit(f"--init must be scratch, imagenet or model, not {config.init!r}")
    return network


def load_imagenet_weights(source: str) -> dict[str, Tensor]:
    if source.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=True)
    return torch.load(source, map_location="cpu", weights_only=True)
