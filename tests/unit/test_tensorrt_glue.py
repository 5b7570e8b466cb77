"""The TensorRT glue against tests/fake_tensorrt.py.

TensorRT and CUDA cannot exist on this machine, so both are FAKED here: `tensorrt` is the stand-in module from
tests/fake_tensorrt.py (injected into sys.modules) and CUDA memory is its FakeAllocator. Everything else is real:
the ONNX files, the fp16 conversion, the engine cache on disk, and ONNX Runtime computing the reference outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.backends.base import BackendUnavailable, run_in_batches
from models.backends.tensorrt import TrtBackend, convert_to_fp16
from models.engine_cache import BatchProfile, EngineCache
from tests.fake_tensorrt import FakeAllocator, FakeTensorRT

# TensorRT 10 gets the FP16 and INT8 builder flags; TensorRT 11 a strongly typed network (flag bit 1) and none.
int8_builds = pytest.mark.parametrize(("version", "network_flags", "builder_flags"),
                                      [("10.3.0", [0], ["FP16", "INT8"]), ("11.0.0", [1 << 1], [])])


def install_fake(monkeypatch: pytest.MonkeyPatch, version: str) -> FakeTensorRT:
    fake = FakeTensorRT(version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def faces(count: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 1, 16, 16)).astype(np.float32)


def ort_outputs(model_path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"faces": batch})[0]


def add_input_qdq(model_path: Path, out_path: Path, zero_point: np.ndarray | None = None) -> Path:
    """The tiny model with a QuantizeLinear/DequantizeLinear pair on its input: explicit INT8 quantization."""
    model = onnx.load(str(model_path))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["faces_dq" if name == "faces" else name for name in node.input]
    zero_point = np.array(0, np.int8) if zero_point is None else zero_point
    graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "q_scale"),
                              numpy_helper.from_array(zero_point, "q_zero")])
    quantize = [helper.make_node("QuantizeLinear", ["faces", "q_scale", "q_zero"], ["faces_q"]),
                helper.make_node("DequantizeLinear", ["faces_q", "q_scale", "q_zero"], ["faces_dq"])]
    nodes = [*quantize, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, out_path)
    return out_path


def test_tensorrt_10_builds_with_fp16_builder_flag_and_batch_profile(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path) -> None:
    # given TensorRT 10 (faked)
    fake = install_fake(monkeypatch, "10.3.0")
    cache = EngineCache(tmp_path / "engines")

    # when
    backend = TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 32, 64), cache, FakeAllocator(fake))

    # then the weakly typed network gets precision as builder flags, and the profile spans the batch axis
    assert fake.calls.network_flags == [0]
    assert fake.calls.builder_flags == ["FP16"]
    assert fake.calls.profile_shapes == [("faces", (1, 1, 16, 16), (32, 1, 16, 16), (64, 1, 16, 16))]
    assert fake.calls.parsed_initializer_types == {TensorProto.FLOAT}
    assert fake.calls.memory_pool_limits["WORKSPACE"] > 0
    (engine_file,) = (tmp_path / "engines").glob("*.engine")
    assert engine_file.read_bytes() == fake.calls.serialized[0]
    assert backend.max_batch == 64


def test_tensorrt_11_builds_a_strongly_typed_network_from_an_fp16_onnx(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path) -> None:
    # given TensorRT 11 (faked), whose BuilderFlag.FP16 no longer exists
    fake = install_fake(monkeypatch, "11.0.0")
    assert not hasattr(fake, "BuilderFlag")
    batch = faces(20)

    # when
    backend = TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 8, 16), EngineCache(tmp_path), FakeAllocator(fake))
    probs = run_in_batches(backend, batch)

    # then the network is strongly typed, its weights are fp16, and the fp16 graph still answers like the fp32 one
    assert fake.calls.network_flags == [1 << 1]
    assert fake.calls.builder_flags == []
    assert fake.calls.parsed_initializer_types == {TensorProto.FLOAT16}
    np.testing.assert_allclose(probs, ort_outputs(tiny_model_path, batch), atol=2e-3)


def test_batches_split_at_the_profile_max_run_through_the_bound_buffers(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path) -> None:
    # given an fp32 engine whose profile stops at 64 faces
    fake = install_fake(monkeypatch, "10.3.0")
    allocator = FakeAllocator(fake)
    backend = TrtBackend(tiny_model_path, "fp32", BatchProfile(1, 32, 64), EngineCache(tmp_path), allocator)
    batch = faces(150)

    # when the caller splits it (the backend takes at most its profile's max)
    probs = run_in_batches(backend, batch)

    # then 150 faces go as 64 + 64 + 22 through the buffers bound once, on the process's stream
    assert [shape for _, shape in fake.calls.input_shapes] == [(64, 1, 16, 16), (64, 1, 16, 16), (22, 1, 16, 16)]
    assert allocator.uploads == [64, 64, 22]
    assert fake.calls.tensor_addresses == {"faces": backend.input.device_ptr, "probs": backend.output.device_ptr}
    assert fake.calls.execute_streams == [FakeAllocator.stream] * 3
    assert fake.calls.builder_flags == []
    np.testing.assert_allclose(probs, ort_outputs(tiny_model_path, batch), rtol=1e-5, atol=1e-6)
    # and a batch over the profile's max is refused rather than written past the buffers
    with pytest.raises(ValueError, match="max batch 64"):
        backend.run(faces(65))


def test_a_cached_engine_is_loaded_not_rebuilt_and_precision_is_part_of_the_key(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path) -> None:
    # given one engine already built
    fake = install_fake(monkeypatch, "10.3.0")
    cache = EngineCache(tmp_path)
    TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 8, 16), cache, FakeAllocator(fake))

    # when the same engine, then another precision, is asked for
    TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 8, 16), cache, FakeAllocator(fake))
    TrtBackend(tiny_model_path, "fp32", BatchProfile(1, 8, 16), cache, FakeAllocator(fake))

    # then only the new key was built
    assert fake.calls.builds == 2
    assert len(list(tmp_path.glob("*.engine"))) == 2


@pytest.mark.parametrize("version", ["10.3.0", "11.0.0"])
def test_int8_without_qdq_nodes_is_unavailable_with_the_reason(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path, version: str) -> None:
    # given a float model (no QuantizeLinear/DequantizeLinear)
    fake = install_fake(monkeypatch, version)

    # when / then
    with pytest.raises(BackendUnavailable, match="QuantizeLinear/DequantizeLinear"):
        TrtBackend(tiny_model_path, "int8", BatchProfile(1, 8, 16), EngineCache(tmp_path), FakeAllocator(fake))
    assert fake.calls.builds == 0


@int8_builds
def test_int8_from_an_explicitly_quantized_onnx(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path, version: str,
        network_flags: list[int], builder_flags: list[str]) -> None:
    # given a model carrying Q/DQ nodes
    fake = install_fake(monkeypatch, version)
    quantized = add_input_qdq(tiny_model_path, tmp_path / "tiny-qdq.onnx")

    # when
    TrtBackend(quantized, "int8", BatchProfile(1, 8, 16), EngineCache(tmp_path / "engines"), FakeAllocator(fake))

    # then TensorRT 10 gets the INT8 flag, TensorRT 11 a strongly typed network that keeps the Q/DQ as given
    assert fake.calls.network_flags == network_flags
    assert fake.calls.builder_flags == builder_flags
    assert TensorProto.FLOAT16 not in fake.calls.parsed_initializer_types


def test_an_engine_from_another_tensorrt_version_is_never_loaded(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path) -> None:
    # given an engine cached by TensorRT 10.3
    cache = EngineCache(tmp_path)
    old = install_fake(monkeypatch, "10.3.0")
    TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 8, 16), cache, FakeAllocator(old))

    # when the worker now runs TensorRT 10.4
    new = install_fake(monkeypatch, "10.4.0")
    backend = TrtBackend(tiny_model_path, "fp16", BatchProfile(1, 8, 16), cache, FakeAllocator(new))

    # then it built its own engine (the version is part of the key) and that one runs
    assert new.calls.builds == 1
    assert backend.run(faces(3)).shape == (3, 7)


def test_fp16_conversion_keeps_float32_edges_and_metadata(tiny_model_path: Path, tmp_path: Path) -> None:
    # given the fp32 tiny model
    model = onnx.load(str(tiny_model_path))

    # when
    converted = convert_to_fp16(model)
    onnx.save(converted, tmp_path / "fp16.onnx")

    # then weights are fp16, inputs and outputs stay fp32, the metadata survives, and ONNX Runtime agrees
    assert {tensor.data_type for tensor in converted.graph.initializer} == {TensorProto.FLOAT16}
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {p.key: p.value for p in converted.metadata_props} == {p.key: p.value for p in model.metadata_props}
    batch = faces(32)
    np.testing.assert_allclose(ort_outputs(tmp_path / "fp16.onnx", batch), ort_outputs(tiny_model_path, batch),
                               atol=2e-3)


def test_int8_refuses_asymmetric_uint8_qdq_as_onnxruntime_cpu_quantization_writes_it(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path) -> None:
    # given Q/DQ with a uint8 zero point of 128 (ONNX Runtime's default QUInt8 activations)
    fake = install_fake(monkeypatch, "10.3.0")
    quantized = add_input_qdq(tiny_model_path, tmp_path / "tiny-qdq.onnx", np.array(128, np.uint8))

    # when / then
    with pytest.raises(BackendUnavailable, match="uint8 zero point; TensorRT takes only symmetric int8"):
        TrtBackend(quantized, "int8", BatchProfile(1, 8, 16), EngineCache(tmp_path), FakeAllocator(fake))
    assert fake.calls.builds == 0


@int8_builds
def test_int8_from_a_model_quantized_for_tensorrt(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path, version: str,
        network_flags: list[int], builder_flags: list[str]) -> None:
    # given the model as `fervid quantize --target tensorrt` writes it (symmetric int8, zero points 0)
    from models.network_io import preprocess_faces
    from models.spec import read_model_spec
    from models.training.quantize import quantize_int8

    fake = install_fake(monkeypatch, version)
    spec = read_model_spec(tiny_model_path)
    calibration = np.random.default_rng(3).integers(0, 256, (32, 48, 48), dtype=np.uint8)
    quantized = quantize_int8(tiny_model_path, tmp_path / "int8.onnx", calibration, spec.preprocess, "tensorrt")

    # when TensorRT builds it for int8
    backend = TrtBackend(quantized, "int8", BatchProfile(1, 8, 16), EngineCache(tmp_path / "engines"),
                         FakeAllocator(fake))

    # then the glue accepted its Q/DQ as given, and the engine computes what the float model does, within int8
    assert fake.calls.network_flags == network_flags and fake.calls.builder_flags == builder_flags
    assert {"QuantizeLinear", "DequantizeLinear"} <= fake.calls.parsed_op_types
    batch = preprocess_faces(list(calibration[:16]), spec.preprocess)
    np.testing.assert_allclose(backend.run(batch), ort_outputs(tiny_model_path, batch), atol=0.05)


def test_fp16_from_a_model_quantized_for_the_cpu_builds_from_its_float_equivalent(
        monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, tmp_path: Path) -> None:
    # given the model as `fervid eval --int8` writes it for ONNX Runtime on the CPU (uint8 activations)
    from models.network_io import preprocess_faces
    from models.spec import read_model_spec
    from models.training.quantize import quantize_int8

    fake = install_fake(monkeypatch, "10.3.0")
    spec = read_model_spec(tiny_model_path)
    calibration = np.random.default_rng(3).integers(0, 256, (32, 48, 48), dtype=np.uint8)
    quantized = quantize_int8(tiny_model_path, tmp_path / "int8.onnx", calibration, spec.preprocess)

    # when TensorRT builds it for fp16
    backend = TrtBackend(quantized, "fp16", BatchProfile(1, 8, 16), EngineCache(tmp_path / "engines"),
                         FakeAllocator(fake))

    # then it parsed a float graph (no Q/DQ for its asymmetric activations) whose outputs match the INT8 model's
    assert fake.calls.builds == 1
    assert not fake.calls.parsed_op_types & {"QuantizeLinear", "DequantizeLinear"}
    # (on faces like those it was calibrated on: outside the calibrated ranges INT8 clips and float does not)
    batch = preprocess_faces(list(calibration[:16]), spec.preprocess)
    np.testing.assert_allclose(backend.run(batch), ort_outputs(quantized, batch), atol=0.03)


def test_an_engine_built_ahead_by_the_cli_is_the_one_workers_load(
        monkeypatch: pytest.MonkeyPatch, fervid_env: pytest.MonkeyPatch, tiny_model_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # given TensorRT and CUDA faked for the whole process, as the registry and the CLI would find them
    import models.backends.tensorrt as trt_backend
    from fervid.cli import main
    from fervid.settings import get_settings
    from models.backends import BackendOptions, select_backend

    fake = install_fake(monkeypatch, "10.3.0")
    allocator = FakeAllocator(fake)
    monkeypatch.setattr(trt_backend, "process_allocator", lambda: allocator)
    fervid_env.setenv("FERVID_CLASSIFY_BATCH", "48")

    # when the engine is built ahead with the CLI's defaults, then a worker selects TensorRT with its batch
    built = main(["engines", "build", "--model", str(tiny_model_path)])
    backend = select_backend(tiny_model_path, "tensorrt", max_batch=48,
                             options=BackendOptions.from_settings(get_settings()))

    # then the worker loaded the CLI's engine instead of building another, and it runs
    assert built == 0 and '"precision": "fp16"' in capsys.readouterr().out
    assert fake.calls.builds == 1
    assert fake.calls.profile_shapes == [("faces", (1, 1, 16, 16), (32, 1, 16, 16), (48, 1, 16, 16))]
    assert backend.name == "tensorrt"
    np.testing.assert_allclose(backend.run(faces(5)), ort_outputs(tiny_model_path, faces(5)), atol=2e-3)


def test_workers_build_at_the_configured_precision(
        monkeypatch: pytest.MonkeyPatch, fervid_env: pytest.MonkeyPatch, tiny_model_path: Path) -> None:
    # given workers configured for int8 engines, and a float model
    from fervid.settings import get_settings
    from models.backends import BackendOptions, tensorrt
    from models.backends.tensorrt import create

    fake = install_fake(monkeypatch, "10.3.0")
    monkeypatch.setattr(tensorrt, "process_allocator", lambda: FakeAllocator(fake))
    fervid_env.setenv("FERVID_TENSORRT_PRECISION", "int8")
    get_settings.cache_clear()
    # when / then the worker's backend asks for int8, and says why this model cannot have it
    with pytest.raises(BackendUnavailable, match="QuantizeLinear/DequantizeLinear"):
        create("tensorrt", tiny_model_path, 16, BackendOptions.from_settings(get_settings()))
    assert fake.calls.builds == 0
