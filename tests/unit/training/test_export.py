from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

import models.training.export
import models.training.initial_network
from fervid.cli import main as fervid_main
from fervid.files import sha256_file
from fervid.labels import EMOTIONS
from models.graph_rewrites import FP32_SUFFIX, restore_fp32_weights, store_weights
from models.spec import read_model_spec
from models.training.checkpoint import save_checkpoint
from models.training.export import build_network, export_onnx, load_checkpoint
from models.training.optimizer import build_optimizer
from models.training.recipe import TrainConfig, resolve_recipe
from models.training.selection import Standing

INPUT_SIZE = 32


def write_checkpoint(path: Path, input_size: int = INPUT_SIZE, trained_looking: bool = True,
                     stem: str = "imagenet") -> Path:
    """A real `fervid train` checkpoint; `trained_looking` gives every tensor distinct values, as training does."""
    # The data path is only recorded in the checkpoint: the network is built, never trained here.
    config = resolve_recipe(TrainConfig(out_dir=path.parent, data=path.parent / "fer2013.npz", stem=stem,
                                        input_size=input_size, epochs=3))
    torch.manual_seed(0)
    network = models.training.initial_network.build_network(config)
    if trained_looking:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            # Fresh BatchNorm tensors are all ones or zeros; the convolutions are random already.
            for tensor in network.state_dict().values():
                if tensor.is_floating_point() and tensor.ndim == 1:
                    tensor.add_(torch.rand(tensor.shape, generator=generator) * 0.1)
    save_checkpoint(path, network, build_optimizer(network, config), config, epoch=0, step=3,
                    best=Standing(0.25, None, 0.25), own=Standing(0.25, None, 0.25))
    return path


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "best.pt")


@pytest.fixture(scope="module")
def exported(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    return {weights: export_onnx(checkpoint_path, folder / f"{weights}.onnx", tta=weights == "fp16", weights=weights)
            for weights in ("fp32", "fp16")}


def torch_probs(checkpoint_path: Path, batch: np.ndarray) -> np.ndarray:
    network = build_network(load_checkpoint(checkpoint_path))
    with torch.no_grad():
        return torch.softmax(network(torch.from_numpy(batch)), dim=1).numpy()


@pytest.mark.parametrize(("weights", "tolerance"), [("fp32", 1e-4), ("fp16", 5e-3)])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_onnx_probabilities_match_pytorch_at_any_batch_size(
    checkpoint_path: Path, exported: dict[str, Path], weights: str, tolerance: float, batch_size: int
) -> None:
    # given preprocessed faces
    batch = np.random.default_rng(batch_size).normal(0, 1, (batch_size, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)

    # when the exported graph runs them
    session = ort.InferenceSession(str(exported[weights]), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {"faces": batch})

    # then it returns probabilities equal to PyTorch's softmax(logits)
    assert probs.shape == (batch_size, len(EMOTIONS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(probs - torch_probs(checkpoint_path, batch)).max() < tolerance


@pytest.mark.parametrize("weights", ["fp32", "fp16"])
def test_initializer_names_are_the_state_dict_keys(
    checkpoint_path: Path, exported: dict[str, Path], weights: str
) -> None:
    # given the checkpoint's state dict (BatchNorm's step counter is not a weight)
    keys = {key for key in load_checkpoint(checkpoint_path).state_dict if not key.endswith("num_batches_tracked")}

    # when the exported graph is read
    graph = onnx.load(str(exported[weights])).graph

    # then every weight is an initializer under its PyTorch name, and only the faces are inputs
    assert {init.name for init in graph.initializer} == keys
    assert {"conv1.weight", "layer1.0.bn1.running_mean", "fc.weight"} <= keys
    assert [value.name for value in graph.input] == ["faces"]
    assert [value.name for value in graph.output] == ["probs"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_fp16_storage_halves_the_file_and_feeds_consumers_through_casts(exported: dict[str, Path]) -> None:
    # given the two exports of one checkpoint
    graph = onnx.load(str(exported["fp16"])).graph

    # then the fp16 file stores half-precision weights, cast to fp32 once, and is about half the size
    assert {init.data_type for init in graph.initializer} == {TensorProto.FLOAT16}
    casts = {node.input[0]: node.output[0] for node in graph.node if node.op_type == "Cast"}
    assert casts["conv1.weight"] == "conv1.weight" + FP32_SUFFIX
    first_conv = next(node for node in graph.node if node.op_type == "Conv")
    assert first_conv.input[1] == "conv1.weight" + FP32_SUFFIX
    ratio = exported["fp16"].stat().st_size / exported["fp32"].stat().st_size
    assert 0.45 < ratio < 0.55


def test_restoring_fp32_weights_undoes_fp16_storage_exactly(exported: dict[str, Path]) -> None:
    # given an fp32 export and its fp16-stored copy
    fp32 = onnx.load(str(exported["fp32"]))
    half = store_weights(onnx.load(str(exported["fp32"])), "fp16")

    # when the fp16 storage is undone
    restored = restore_fp32_weights(half)

    # then there are no Casts left and every weight is the fp16-rounded fp32 original, under its own name
    assert not [node for node in restored.graph.node if node.op_type == "Cast"]
    originals = {init.name: onnx.numpy_helper.to_array(init) for init in fp32.graph.initializer}
    for init in restored.graph.initializer:
        values = onnx.numpy_helper.to_array(init)
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, originals[init.name].astype(np.float16).astype(np.float32))
    onnx.checker.check_model(restored)


def test_metadata_describes_the_model_to_the_runtime(exported: dict[str, Path]) -> None:
    # when the runtime reads the exported model
    spec = read_model_spec(exported["fp16"])
    plain = read_model_spec(exported["fp32"])
    meta = {prop.key: prop.value for prop in onnx.load(str(exported["fp16"])).metadata_props}

    # then it knows labels, preprocessing, output and TTA, and the provenance is recorded
    assert spec.labels == EMOTIONS and spec.output == "probs"
    assert spec.tta == "hflip" and plain.tta == ""
    assert spec.preprocess.size == (INPUT_SIZE, INPUT_SIZE) and spec.preprocess.native_size == (48, 48)
    assert spec.preprocess.channels == 1 and spec.preprocess.mean == (0.5,) and spec.preprocess.std == (0.25,)
    assert spec.preprocess.scale == pytest.approx(1 / 255)
    assert spec.name == "fervid-resnet50-fer2013"
    assert re.fullmatch(r"\d{8}-[0-9a-f]{8}", spec.version) and spec.version == plain.version
    assert meta["fervid.input_size"] == str(INPUT_SIZE) and meta["fervid.epochs"] == "1"
    assert meta["fervid.init"] == "scratch" and meta["fervid.public_acc"] == "0.2500"
    assert meta["fervid.weights"] == "fp16"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", meta["fervid.git_commit"])
    assert meta["fervid.data_sha256"] == "unknown"  # no history.json beside the checkpoint, no --data


def test_export_verifies_on_real_faces_and_records_the_data_hash(
    checkpoint_path: Path, shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the real FER-2013 file
    data = shared_dir / "data" / "fer2013.npz"

    # when exporting with it
    out = export_onnx(checkpoint_path, tmp_path / "model.onnx", tta=False, weights="fp32", data_path=data)

    # then the check ran on PublicTest faces and the file's hash is recorded
    assert "PublicTest faces" in capsys.readouterr().out
    meta = {prop.key: prop.value for prop in onnx.load(str(out)).metadata_props}
    assert meta["fervid.data_sha256"] == sha256_file(data)


def test_an_export_that_drifts_from_pytorch_is_refused_and_not_written(
    checkpoint_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a tolerance no export can meet
    monkeypatch.setitem(models.training.export.TOLERANCE, "fp32", -1.0)

    # when exporting
    with pytest.raises(models.training.export.FervidError) as raised:
        export_onnx(checkpoint_path, tmp_path / "model.onnx", tta=False, weights="fp32")

    # then it fails with a code and leaves nothing behind
    assert raised.value.code == "export_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # when exporting a checkpoint that does not exist
    code = fervid_main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")])

    # then the command exits 2 with a one-line, coded message
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("fervid export: checkpoint_not_found:") and "\n" not in error


def test_equal_valued_tensors_keep_their_own_names(tmp_path: Path) -> None:
    # given an untrained checkpoint, where every BatchNorm holds the same ones and zeros
    checkpoint = write_checkpoint(tmp_path / "fresh.pt", trained_looking=False)

    # when it is exported
    out = export_onnx(checkpoint, tmp_path / "fresh.onnx", tta=False, weights="fp32")

    # then the exporter did not merge equal tensors under one name
    keys = {key for key in load_checkpoint(checkpoint).state_dict if not key.endswith("num_batches_tracked")}
    assert {init.name for init in onnx.load(str(out)).graph.initializer} == keys


def test_int8_scaled_storage_quarters_the_file_and_restores_within_half_a_step(
    checkpoint_path: Path, exported: dict[str, Path], tmp_path: Path
) -> None:
    # given an fp32 export and an int8-scaled export of the same checkpoint
    out = export_onnx(checkpoint_path, tmp_path / "int8.onnx", tta=False, weights="int8-scaled")
    stored = onnx.load(str(out))

    # then convolution and linear weights are int8 with per-output-channel scales, vectors fp16
    kinds = {init.name: init.data_type for init in stored.graph.initializer}
    assert kinds["conv1.weight"] == TensorProto.INT8 and kinds["fc.weight"] == TensorProto.INT8
    assert kinds["bn1.running_var"] == TensorProto.FLOAT16 and kinds["conv1.weight__scale"] == TensorProto.FLOAT
    assert 0.2 < out.stat().st_size / exported["fp32"].stat().st_size < 0.3

    # and restoring gives back every weight within half a quantization step, the scales gone
    fp32_graph = onnx.load(str(exported["fp32"])).graph
    originals = {init.name: onnx.numpy_helper.to_array(init) for init in fp32_graph.initializer}
    restored = restore_fp32_weights(stored)
    assert {init.name for init in restored.graph.initializer} == set(originals)
    for init in restored.graph.initializer:
        values, original = onnx.numpy_helper.to_array(init), originals[init.name]
        assert values.dtype == np.float32
        if original.ndim >= 2:
            step = np.abs(original.reshape(len(original), -1)).max(axis=1) / 127
            assert (np.abs(values - original).reshape(len(original), -1).max(axis=1) <= step / 2 + 1e-7).all()
    assert not [node for node in restored.graph.node if node.op_type in ("Cast", "Mul")]
    onnx.checker.check_model(restored)


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_checkpoint(tmp_path_factory.mktemp("second") / "best.pt")
    state = torch.load(path, weights_only=True)
    generator = torch.Generator().manual_seed(7)
    # A different network: perturb every weight so the two members disagree.
    state["network"] = {key: value + 0.05 * torch.randn(value.shape, generator=generator)
                        if value.is_floating_point() else value for key, value in state["network"].items()}
    state["public_acc"] = 0.5
    torch.save(state, path)
    return path


def test_an_ensemble_export_averages_its_members_probabilities(
    checkpoint_path: Path, second_checkpoint: Path, tmp_path: Path
) -> None:
    # given two different checkpoints and preprocessed faces
    batch = np.random.default_rng(3).normal(0, 1, (5, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    first, second = torch_probs(checkpoint_path, batch), torch_probs(second_checkpoint, batch)
    assert np.abs(first - second).max() > 1e-2

    # when both are exported as one model
    out = export_onnx([checkpoint_path, second_checkpoint], tmp_path / "ensemble.onnx", tta=False, weights="fp32")
    (probs,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["probs"], {"faces": batch})

    # then it returns the mean of their probabilities, and says what it is made of
    np.testing.assert_allclose(probs, (first + second) / 2, atol=1e-4)
    meta = {prop.key: prop.value for prop in onnx.load(str(out)).metadata_props}
    assert meta["fervid.members"] == "2" and read_model_spec(out).members == 2
    assert meta["fervid.public_acc"] == "0.2500,0.5000" and meta["fervid.epochs"] == "1,1"
    names = {init.name for init in onnx.load(str(out)).graph.initializer}
    assert {"members.0.conv1.weight", "members.1.fc.bias"} <= names


def test_torch_backend_rebuilds_an_int8_scaled_ensemble_and_matches_onnxruntime(
    checkpoint_path: Path, second_checkpoint: Path, tmp_path: Path
) -> None:
    # given the ensemble stored as int8-scaled (ONNX Runtime folds its Cast/Mul at load as the reference)
    from models.backends.torch_cuda import TorchCudaBackend

    out = export_onnx([checkpoint_path, second_checkpoint], tmp_path / "ensemble.onnx", tta=False,
                      weights="int8-scaled")
    batch = np.random.default_rng(4).normal(0, 1, (3, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    (reference,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["probs"], {"faces": batch})

    # when the torch backend loads it (on the CPU here: there is no GPU)
    probs = TorchCudaBackend(out, device="cpu").run(batch)

    # then both members load by their prefixed names and the average matches
    np.testing.assert_allclose(probs, reference, atol=1e-4)


def test_an_earlier_export_can_be_a_member(
    checkpoint_path: Path, exported: dict[str, Path], second_checkpoint: Path, tmp_path: Path
) -> None:
    # given the fp16 export of the first checkpoint (its training run gone) and the second checkpoint
    batch = np.random.default_rng(5).normal(0, 1, (4, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    (shipped,) = ort.InferenceSession(str(exported["fp16"]), providers=["CPUExecutionProvider"]).run(
        ["probs"], {"faces": batch})

    # when the export is read back as a member and joined with the checkpoint
    member = load_checkpoint(exported["fp16"])
    out = export_onnx([exported["fp16"], second_checkpoint], tmp_path / "ensemble.onnx", tta=False, weights="fp32")
    (probs,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["probs"], {"faces": batch})

    # then the member keeps the export's weights and provenance, and the ensemble averages what each computes
    assert member.input_size == INPUT_SIZE and member.epoch == 0 and member.public_acc == 0.25
    np.testing.assert_allclose(probs, (shipped + torch_probs(second_checkpoint, batch)) / 2, atol=1e-4)


def test_an_ensemble_cannot_be_a_member_and_members_must_share_an_input_size(
    checkpoint_path: Path, second_checkpoint: Path, tmp_path: Path
) -> None:
    # given an ensemble export and a checkpoint trained at another input size
    ensemble = export_onnx([checkpoint_path, second_checkpoint], tmp_path / "ensemble.onnx", tta=False,
                           weights="fp16")
    larger = write_checkpoint(tmp_path / "larger.pt", input_size=INPUT_SIZE * 2)

    # when / then each is refused with a code
    with pytest.raises(models.training.export.FervidError) as nested:
        export_onnx([ensemble, checkpoint_path], tmp_path / "nested.onnx", tta=False)
    with pytest.raises(models.training.export.FervidError) as mixed:
        export_onnx([checkpoint_path, larger], tmp_path / "mixed.onnx", tta=False)
    assert nested.value.code == "invalid_checkpoint"
    assert mixed.value.code == "invalid_request" and "input sizes" in str(mixed.value)
