from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from fervid.errors import FervidError
from models.backends.ort import OrtBackend
from models.graph_rewrites import dequantize_qdq, has_qdq
from models.network_io import preprocess_faces
from models.spec import read_model_spec
from models.training.export import export_onnx
from models.training.quantize import CALIBRATION_KEY, quantize_int8
from tests.unit.training.test_export import write_checkpoint


def random_faces(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 48, 48), dtype=np.uint8)


def run_model(path: Path, faces: np.ndarray) -> np.ndarray:
    return OrtBackend(path).run(preprocess_faces(list(faces), read_model_spec(path).preprocess))


def metadata(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def test_int8_model_stays_close_to_fp32_and_keeps_its_metadata(tiny_model_path: Path, tmp_path: Path) -> None:
    # given a small fp32 classifier and calibration faces
    spec = read_model_spec(tiny_model_path)

    # when it is quantized
    out = quantize_int8(tiny_model_path, tmp_path / "int8.onnx", random_faces(64, seed=1), spec.preprocess)

    # then on other faces its probabilities stay close to fp32 and still sum to one (softmax left in float)
    faces = random_faces(32, seed=2)
    fp32, int8 = run_model(tiny_model_path, faces), run_model(out, faces)
    assert np.abs(int8 - fp32).max() < 0.03
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, atol=1e-5)
    # and it is really quantized: int8 weights behind DequantizeLinear
    graph = onnx.load(str(out)).graph
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)
    assert any(init.data_type == TensorProto.INT8 for init in graph.initializer)
    assert not any(node.op_type == "QuantizeLinear" and node.input[0] == "probs" for node in graph.node)
    # and the runtime reads it like the original, under a suffixed name
    before, after = metadata(tiny_model_path), metadata(out)
    assert after["fervid.name"] == "tiny-test-classifier-int8"
    renewed = ("fervid.name", "fervid.version")  # new weights: a new version, never the float file's
    assert {key: after[key] for key in before if key not in renewed} == {
        key: value for key, value in before.items() if key not in renewed}
    assert after["fervid.version"] != before["fervid.version"]
    assert after["fervid.weights"] == "int8" and after[CALIBRATION_KEY].startswith("64 train faces")
    assert read_model_spec(out).preprocess == spec.preprocess


def test_an_int8_model_turns_back_into_a_float_graph_with_its_quantized_weights(
        tiny_model_path: Path, tmp_path: Path) -> None:
    # given the INT8 model the CPU runs (QDQ: int8 weights, uint8 activations)
    spec = read_model_spec(tiny_model_path)
    quantized = quantize_int8(tiny_model_path, tmp_path / "int8.onnx", random_faces(64, seed=1), spec.preprocess)

    # when it is dequantized for a runtime that computes in float (TensorRT fp16, ONNX Runtime on CUDA)
    model = dequantize_qdq(onnx.load(str(quantized)))
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "float.onnx")

    # then no Q/DQ node and no integer weight is left, and it computes what the INT8 model and the original do
    assert not has_qdq(model)
    assert not {TensorProto.INT8, TensorProto.UINT8} & {init.data_type for init in model.graph.initializer}
    faces = random_faces(32, seed=2)
    restored = run_model(tmp_path / "float.onnx", faces)
    assert np.abs(restored - run_model(quantized, faces)).max() < 0.03
    assert np.abs(restored - run_model(tiny_model_path, faces)).max() < 0.03
    # and a float model passes through unchanged
    plain = onnx.load(str(tiny_model_path))
    assert dequantize_qdq(onnx.load(str(tiny_model_path))) == plain


def test_an_fp16_stored_export_is_quantized_from_its_exact_fp32_weights(tmp_path: Path) -> None:
    # given a ResNet50 export whose weights are stored as fp16 behind Casts
    checkpoint = write_checkpoint(tmp_path / "best.pt", input_size=32)
    fp16 = export_onnx(checkpoint, tmp_path / "fp16.onnx", tta=True, weights="fp16")
    spec = read_model_spec(fp16)

    # when it is quantized
    out = quantize_int8(fp16, tmp_path / "int8.onnx", random_faces(32, seed=3), spec.preprocess)

    # then every convolution's weight is int8, no fp16 Cast is left, and the output tracks the fp16 model
    graph = onnx.load(str(out)).graph
    int8_weights = {init.name for init in graph.initializer if init.data_type == TensorProto.INT8}
    producers = {output: node for node in graph.node for output in node.output}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convolutions) == 53  # ResNet50
    for conv in convolutions:
        dequantize = producers[conv.input[1]]
        assert dequantize.op_type == "DequantizeLinear" and dequantize.input[0] in int8_weights
    assert not any(node.op_type == "Cast" for node in graph.node)
    faces = random_faces(16, seed=4)
    assert np.abs(run_model(out, faces) - run_model(fp16, faces)).max() < 0.1
    assert metadata(out)["fervid.tta"] == "hflip"


def test_calibration_needs_faces(tiny_model_path: Path, tmp_path: Path) -> None:
    spec = read_model_spec(tiny_model_path)
    with pytest.raises(FervidError):
        quantize_int8(tiny_model_path, tmp_path / "int8.onnx", np.zeros((0, 48, 48), np.uint8), spec.preprocess)
    assert not (tmp_path / "int8.onnx").exists()


def test_the_quantize_command_writes_a_tensorrt_int8_model_from_train_faces(
        tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # given a small data file whose train split is the only one the calibration may read
    from fervid.cli import main
    from models.backends.tensorrt import qdq_incompatibility

    data = tmp_path / "fer.npz"
    rng = np.random.default_rng(0)
    np.savez(data, **{f"x_{name}": rng.integers(0, 256, (40, 48, 48), dtype=np.uint8) for name in
                      ("train", "public", "private")},
             **{f"y_{name}": rng.integers(0, 7, 40) for name in ("train", "public", "private")})

    # when
    out = tmp_path / "trt-int8.onnx"
    assert main(["quantize", "--model", str(tiny_model_path), "--out", str(out), "--target", "tensorrt",
                 "--calibration-size", "16", "--data", str(data)]) == 0

    # then the model is one TensorRT accepts for int8, and says how it was calibrated
    model = onnx.load(str(out))
    assert has_qdq(model) and qdq_incompatibility(model) is None
    assert metadata(out)[CALIBRATION_KEY] == "16 train faces, MinMax, QDQ S8S8 symmetric per-channel"
    assert "calibrated on 16 train faces" in capsys.readouterr().out


def test_dequantizing_keeps_the_relu_that_quantization_folded_into_a_uint8_range(tmp_path: Path) -> None:
    # given conv -> relu -> conv, quantized by ONNX Runtime, which drops the Relu: the next uint8 range starts at 0
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(5)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 1, 3, 3)), ("w2", (4, 8, 3, 3)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])],
        "conv-relu-conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], weights)
    float_path, int8_path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), float_path)
    inputs = rng.normal(0, 1, (16, 1, 8, 8)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": inputs}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(str(float_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    assert "Relu" not in {node.op_type for node in onnx.load(str(int8_path)).graph.node}

    # when it is turned back into float
    restored = dequantize_qdq(onnx.load(str(int8_path)))

    # then it still computes the Relu: it matches the float model within int8 rounding
    def run(model: onnx.ModelProto | Path) -> np.ndarray:
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": inputs})[0]

    expected = run(float_path)
    assert np.abs(run(restored) - expected).max() < 0.05 * np.abs(expected).max()
