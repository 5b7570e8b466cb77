"""PyTorch on CUDA: the exported classifier rebuilt as EmotionResNet50 from the ONNX's own weights.

For verification where TensorRT is absent (fp16 parity, GPU throughput); `auto` never chooses it. The exporter
names each ONNX initializer after its torch state_dict key (members.<i>.<key> in an ensemble), so the weights load
by name. torch and the training bench's network (models.training.network) are imported only inside the functions
that need them: the runtime never imports torch otherwise (a contract in pyproject.toml's [tool.importlinter]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.backends.base import BackendOptions, BackendProbe, BackendUnavailable
from models.graph_rewrites import restore_fp32_weights
from models.spec import LEGACY_STEM, STEM_KEY, read_model_spec


def probe(name: str) -> BackendProbe:
    try:
        import torch
    except ImportError as error:
        return BackendProbe(name, False, f"cannot import torch ({error})")
    if not torch.cuda.is_available():
        return BackendProbe(name, False, f"torch {torch.__version__} sees no CUDA device")
    return BackendProbe(name, True, f"torch {torch.__version__} on {torch.cuda.get_device_name()} "
                                    "(verification only; auto never picks it)")


def onnx_weights(model: Any) -> dict[str, NDArray[Any]]:
    """Float32 initializers by name (however the file stores them), plus the names the exporter turned into Identity
    aliases of an equal initializer."""
    from onnx import numpy_helper

    model = restore_fp32_weights(model)
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    return weights


def load_onnx_weights(network: Any, weights: dict[str, NDArray[Any]], source: str, prefix: str = "") -> None:
    """Loads every parameter and running statistic of `network` from the ONNX weights named `prefix + key`."""
    import torch

    state = network.state_dict()
    # BatchNorm's step counter only matters in training and is not exported.
    wanted = [key for key in state if not key.endswith("num_batches_tracked")]
    missing = [prefix + key for key in wanted if prefix + key not in weights]
    if missing:
        raise BackendUnavailable(f"{source} lacks {len(missing)} weights EmotionResNet50 needs (first: "
                                 f"{', '.join(missing[:3])}); torch-cuda loads only models exported by `fervid export`")
    loaded = {}
    for key in wanted:
        value = weights[prefix + key].astype(np.float32)
        if tuple(value.shape) != tuple(state[key].shape):
            raise BackendUnavailable(f"{source}: weight {prefix}{key} has shape {value.shape}, EmotionResNet50 expects "
                                     f"{tuple(state[key].shape)}")
        loaded[key] = torch.from_numpy(value)
    network.load_state_dict(loaded, strict=False)


class TorchCudaBackend:
    name = "torch-cuda"

    def __init__(self, model_path: Path, max_batch: int = 256, device: str = "cuda", fp16: bool = False) -> None:
        import onnx
        import torch

        from models.training.network import EmotionResNet50

        spec = read_model_spec(model_path)
        members = spec.members
        self.torch = torch
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.fp16 = fp16
        self.precision = "fp16" if fp16 else "fp32"
        self.concurrent_runs = False
        self.classes = len(spec.labels)
        self.softmax = spec.output == "probs"  # the exported graph ends in softmax; the torch network in logits
        if members > 1 and not self.softmax:
            raise BackendUnavailable(f"{model_path}: an ensemble must output probabilities")
        model = onnx.load(str(model_path))
        weights = onnx_weights(model)
        stored_stems = {prop.key: prop.value for prop in model.metadata_props}.get(STEM_KEY, "")
        stems = stored_stems.split(",") if stored_stems else [LEGACY_STEM] * members  # files before the key
        self.networks = []
        for member in range(members):
            network = EmotionResNet50(num_classes=len(spec.labels), in_channels=spec.preprocess.channels,
                                      stem=stems[member])
            load_onnx_weights(network, weights, str(model_path), f"members.{member}." if members > 1 else "")
            self.networks.append(network.eval().to(self.device))

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        torch = self.torch
        with torch.inference_mode():
            faces = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
                raw = [network(faces).float() for network in self.networks]
            if self.softmax:  # as the exported graph does: each member's softmax, then their mean
                outputs = torch.stack([torch.softmax(logits, dim=1) for logits in raw]).mean(0).cpu().numpy()
            else:
                outputs = raw[0].cpu().numpy()
        return np.asarray(outputs, dtype=np.float32)

def create(name: str, model_path: Path, max_batch: int, options: BackendOptions) -> TorchCudaBackend:
    return TorchCudaBackend(model_path, max_batch)
