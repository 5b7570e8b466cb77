"""`fervid train --init model`: a network rebuilt from an exported (even INT8) model computes what the file does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fervid.errors import FervidError
from models.graph_rewrites import dequantize_qdq
from models.spec import read_model_spec
from models.training.export import export_onnx, load_checkpoint
from models.training.predict import to_input
from models.training.quantize import quantize_int8
from models.training.warm_start import exported_member, warm_start_network
from tests.unit.training.test_export import INPUT_SIZE, write_checkpoint

DATA_SHA = "f" * 64  # the training data's hash; the test models record none ("unknown")


def faces(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 48, 48), dtype=np.uint8)


def torch_probs(network: nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(network.eval()(batch), dim=1).numpy()


def two_network_ensemble(folder: Path) -> tuple[Path, Path]:
    """An fp32 ensemble export of two different checkpoints, and the second checkpoint."""
    first = write_checkpoint(folder / "first.pt")
    second = folder / "second.pt"
    payload = torch.load(first, weights_only=True)
    payload["network"] = {key: value * 1.5 if value.is_floating_point() else value
                          for key, value in payload["network"].items()}
    torch.save(payload, second)
    return export_onnx([first, second], folder / "ensemble.onnx", tta=False, weights="fp32"), second


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("int8")
    exported = export_onnx(write_checkpoint(folder / "best.pt"), folder / "fp32.onnx", tta=False, weights="fp32")
    return quantize_int8(exported, folder / "int8.onnx", faces(64, seed=1), read_model_spec(exported).preprocess)


def test_a_network_rebuilt_from_an_int8_model_computes_what_the_file_computes(int8_model: Path) -> None:
    # given an INT8 model, whose quantizer folded every BatchNorm into its convolution
    stored = exported_member(int8_model, 0)
    assert stored.input_size == INPUT_SIZE and len(stored.folded) == 53
    assert "bn1" in stored.folded and "layer4.2.bn3" in stored.folded

    # when a trainable network is rebuilt from it, BatchNorm statistics measured on (training) faces
    network, source = warm_start_network(int8_model, 0, INPUT_SIZE, DATA_SHA,
                                         to_input(faces(256, seed=2), INPUT_SIZE).contiguous())
    assert (source.init, source.epochs) == ("scratch", 1)

    # then in eval mode it computes the file's float equivalent on other faces
    batch = to_input(faces(16, seed=3), INPUT_SIZE).contiguous()
    session = ort.InferenceSession(dequantize_qdq(onnx.load(str(int8_model))).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (expected,) = session.run(["probs"], {"faces": batch.numpy()})
    np.testing.assert_allclose(torch_probs(network, batch), expected, atol=2e-3)
    # and its BatchNorms normalise again: statistics restored, not the identity they were folded into
    batchnorm = network.get_submodule("layer2.0.bn1")
    assert isinstance(batchnorm, nn.BatchNorm2d) and batchnorm.running_var is not None
    assert float(batchnorm.running_var.std()) > 0.0
    assert not torch.allclose(batchnorm.weight, torch.ones_like(batchnorm.weight))


def test_a_member_of_an_unfolded_ensemble_comes_back_exactly(tmp_path: Path) -> None:
    # given an fp32 ensemble of two different checkpoints
    ensemble, second = two_network_ensemble(tmp_path)

    # when its second network is rebuilt
    stored = exported_member(ensemble, 1)

    # then every tensor is the second checkpoint's, BatchNorm statistics included
    expected = load_checkpoint(second).state_dict
    assert stored.folded == []
    assert [key for key in expected if not torch.equal(stored.state_dict[key], expected[key])] == []


def test_a_network_quantized_out_of_an_ensemble_comes_back(tmp_path: Path) -> None:
    # given the second network of an INT8 ensemble quantized again alone, as the shipped file is (`fervid quantize
    # --member 2` of an INT8 file)
    ensemble, _ = two_network_ensemble(tmp_path)
    preprocess = read_model_spec(ensemble).preprocess
    int8_ensemble = quantize_int8(ensemble, tmp_path / "ensemble-int8.onnx", faces(64, seed=1), preprocess)
    alone = quantize_int8(int8_ensemble, tmp_path / "member2.onnx", faces(64, seed=1), preprocess, member=2)

    # when it is rebuilt for training
    network, _ = warm_start_network(alone, 0, INPUT_SIZE, DATA_SHA, to_input(faces(256, seed=2), INPUT_SIZE))

    # then it computes what the file computes, though the file names its weights as the ensemble did
    batch = to_input(faces(16, seed=3), INPUT_SIZE).contiguous()
    session = ort.InferenceSession(dequantize_qdq(onnx.load(str(alone))).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (expected,) = session.run(["probs"], {"faces": batch.numpy()})
    np.testing.assert_allclose(torch_probs(network, batch), expected, atol=2e-3)


def test_a_wrong_member_or_input_size_is_refused_with_a_code(int8_model: Path, tmp_path: Path) -> None:
    with pytest.raises(FervidError) as wrong_member:
        exported_member(int8_model, 1)
    assert wrong_member.value.code == "invalid_request"

    with pytest.raises(FervidError) as wrong_size:
        warm_start_network(int8_model, 0, INPUT_SIZE * 2, DATA_SHA, to_input(faces(8, seed=2), INPUT_SIZE * 2))
    assert wrong_size.value.code == "invalid_request"

    model = onnx.load(str(int8_model))
    for prop in model.metadata_props:
        if prop.key == "fervid.data_sha256":
            prop.value = "0" * 64
    trained_elsewhere = tmp_path / "trained-elsewhere.onnx"
    onnx.save(model, trained_elsewhere)
    with pytest.raises(FervidError) as other_data:
        warm_start_network(trained_elsewhere, 0, INPUT_SIZE, DATA_SHA, to_input(faces(8, seed=2), INPUT_SIZE))
    assert other_data.value.code == "invalid_request" and "another data file" in str(other_data.value)

    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    with pytest.raises(FervidError) as unreadable:
        exported_member(not_onnx, 0)
    assert unreadable.value.code == "invalid_model"
