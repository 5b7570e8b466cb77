"""TensorRT: an engine built from the ONNX classifier (cached per GPU, see models/engine_cache.py) and run on one
CUDA stream per worker process.

Written against the TensorRT 10 and 11 Python APIs. TensorRT 10 takes precision as builder flags (FP16, INT8);
TensorRT 11 removed them, so there the network is strongly typed and the precision comes from the ONNX itself:
an fp16-converted graph for fp16, explicit QuantizeLinear/DequantizeLinear nodes for int8.
`tensorrt` is imported only inside these functions, never when the registry loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.backends.base import BackendOptions, BackendProbe, BackendUnavailable
from models.backends.cuda_memory import CudaAllocator, process_allocator
from models.engine_cache import TENSORRT_PRECISIONS, BatchProfile, EngineCache, EngineKey

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 2 << 30


def import_tensorrt() -> Any:
    import tensorrt

    return tensorrt


def tensorrt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def probe(name: str) -> BackendProbe:
    try:
        trt = import_tensorrt()
    except ImportError as error:
        return BackendProbe(name, False, f"cannot import tensorrt ({error})")
    try:
        device = process_allocator().device_info()
    except BackendUnavailable as unavailable:
        return BackendProbe(name, False, f"tensorrt {trt.__version__} imports, but {unavailable.message}")
    return BackendProbe(name, True, f"tensorrt {trt.__version__} on {device.name} "
                                    f"(compute {device.compute_capability}, CUDA {device.cuda_version})")


def qdq_incompatibility(model: Any) -> str | None:
    """Why TensorRT cannot take this model's Q/DQ nodes, or None: it accepts only symmetric int8 (zero point 0)."""
    from onnx import TensorProto, numpy_helper

    from models.graph_rewrites import QDQ_OPS

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        zero_point = initializers[node.input[2]]
        if zero_point.data_type != TensorProto.INT8 or numpy_helper.to_array(zero_point).any():
            kind = TensorProto.DataType.Name(zero_point.data_type).lower()
            return (f"{node.op_type} {node.name or node.output[0]} has a {kind} zero point"
                    f"{' that is not 0' if zero_point.data_type == TensorProto.INT8 else ''}; TensorRT takes only "
                    "symmetric int8 Q/DQ (quantize activations as QInt8 with symmetric ranges)")
    return None


def convert_to_fp16(model: Any) -> Any:
    """A copy of the ONNX model computing in float16, with float32 graph inputs and outputs (Cast at each edge).

    Converts float32 initializers, Constant/ConstantOfShape tensors, Cast targets and recorded value types; the
    model keeps its metadata, so the result still describes itself.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    fp32, fp16 = TensorProto.FLOAT, TensorProto.FLOAT16
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attr in node.attribute):
        raise ValueError("convert_to_fp16 handles flat graphs only (this one has control-flow subgraphs)")

    def half(tensor: onnx.TensorProto) -> onnx.TensorProto:
        return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)

    initializer_names = set()
    for index, tensor in enumerate(graph.initializer):
        initializer_names.add(tensor.name)
        if tensor.data_type == fp32:
            graph.initializer[index].CopyFrom(half(tensor))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == fp32:
                attr.t.CopyFrom(half(attr.t))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == fp32:
                attr.i = fp16
    for value in graph.value_info:
        if value.type.tensor_type.elem_type == fp32:
            value.type.tensor_type.elem_type = fp16

    def rename_uses(old: str, new: str) -> None:
        for node in graph.node:
            for slots in (node.input, node.output):
                for index, name in enumerate(slots):
                    if name == old:
                        slots[index] = new

    casts_in = []
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type != fp32:
            continue
        if graph_input.name in initializer_names:  # older exports list initializers as inputs too
            graph_input.type.tensor_type.elem_type = fp16
            continue
        internal = f"{graph_input.name}__fp16"
        rename_uses(graph_input.name, internal)
        casts_in.append(helper.make_node("Cast", [graph_input.name], [internal], to=fp16,
                                         name=f"{graph_input.name}__to_fp16"))
    casts_out = []
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type != fp32:
            continue
        internal = f"{graph_output.name}__fp16"
        rename_uses(graph_output.name, internal)
        casts_out.append(helper.make_node("Cast", [internal], [graph_output.name], to=fp32,
                                          name=f"{graph_output.name}__to_fp32"))
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(converted)
    return converted


def network_onnx(model_path: Path, precision: str, major: int) -> bytes:
    """The ONNX bytes TensorRT parses for `precision` on TensorRT `major`."""
    import onnx

    # imports onnx, which only the gpu extra brings
    from models.graph_rewrites import dequantize_qdq, has_qdq, restore_fp32_weights

    if precision not in TENSORRT_PRECISIONS:
        raise BackendUnavailable(f"unknown TensorRT precision {precision!r}; "
                                 f"choose one of {', '.join(TENSORRT_PRECISIONS)}")
    # Plain fp32 initializers: the parser then sees constants, however the file stores them (fp16, int8-scaled).
    model = restore_fp32_weights(onnx.load(str(model_path)))
    if precision == "int8" and not has_qdq(model):
        # TensorRT 11 has no calibrators and this project ships none for 10: INT8 needs explicit quantization.
        raise BackendUnavailable(f"int8 is unavailable for {model_path}: it has no QuantizeLinear/DequantizeLinear "
                                 "nodes (INT8 needs an explicitly quantized ONNX); use fp16")
    problem = qdq_incompatibility(model) if precision == "int8" else None
    if problem:
        raise BackendUnavailable(f"int8 is unavailable for {model_path}: {problem}; use fp16")
    if precision != "int8":
        # A model quantized for the CPU computes here in float with the weights it was quantized to.
        model = dequantize_qdq(model)
    if major >= 11 and precision == "fp16":
        model = convert_to_fp16(model)
    return model.SerializeToString()  # type: ignore[no-any-return]


def build_engine(model_path: Path, precision: str, profile: BatchProfile) -> bytes:
    """Builds and serializes a TensorRT engine for the classifier: minutes for ResNet50, so callers cache it."""
    trt = import_tensorrt()
    major = tensorrt_major(trt)
    onnx_bytes = network_onnx(model_path, precision, major)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = major >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise BackendUnavailable(f"TensorRT's ONNX parser rejected {model_path}: {errors}")
    if network.num_inputs != 1:
        raise BackendUnavailable(f"{model_path} has {network.num_inputs} inputs; the classifier takes one batch")
    net_input = network.get_input(0)
    sample_shape = tuple(int(dim) for dim in net_input.shape)[1:]
    if any(dim < 1 for dim in sample_shape):
        raise BackendUnavailable(f"{model_path} input {net_input.name} has dynamic sample dims {sample_shape}; "
                                 "only the batch axis may be dynamic")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if not strongly_typed and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers outside the Q/DQ pairs run in fp16, not fp32
    if not strongly_typed and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    optimization = builder.create_optimization_profile()
    optimization.set_shape(net_input.name, (profile.min, *sample_shape), (profile.opt, *sample_shape),
                           (profile.max, *sample_shape))
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f"TensorRT could not build an engine for {model_path} ({precision}, batch "
                                 f"{profile.label()}); its log above says why")
    return bytes(serialized)


def cached_engine(model_path: Path, precision: str, profile: BatchProfile, cache: EngineCache,
                  allocator: CudaAllocator | None = None) -> tuple[bytes, EngineKey]:
    """The engine for this model on this GPU: loaded from the cache, or built once and cached."""
    from fervid.files import sha256_file

    trt = import_tensorrt()
    device = (allocator or process_allocator()).device_info()
    key = EngineKey(sha256_file(model_path), str(trt.__version__), device.compute_capability, precision, profile)
    engine = cache.get_or_build(key, device, lambda: build_engine(model_path, precision, profile), model_path)
    return engine, key


class TrtBackend:
    name = "tensorrt"
    concurrent_runs = False  # one execution context and its buffers

    def __init__(self, model_path: Path, precision: str, profile: BatchProfile, cache: EngineCache,
                 allocator: CudaAllocator | None = None) -> None:
        trt = import_tensorrt()
        self.profile = profile
        self.max_batch = self.profile.max
        self.precision = precision
        self.allocator = allocator or process_allocator()
        engine_bytes, key = cached_engine(model_path, precision, self.profile, cache, self.allocator)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise BackendUnavailable(f"TensorRT could not load the cached engine {key.stem()} (its log above says "
                                     "why); run `fervid engines clear` and start again")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        inputs = [name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        outputs = [name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendUnavailable(f"engine {key.stem()} has inputs {inputs} and outputs {outputs}; "
                                     "expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        for name in names:
            if np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))) != np.float32:
                raise BackendUnavailable(f"engine {key.stem()} tensor {name} is not float32")
        self.sample_shape = tuple(int(dim) for dim in self.engine.get_tensor_shape(self.input_name))[1:]
        classes = int(self.engine.get_tensor_shape(self.output_name)[-1])
        # Buffers sized for the profile's max batch once; every run reuses them.
        self.input = self.allocator.buffer((self.max_batch, *self.sample_shape), np.float32)
        self.output = self.allocator.buffer((self.max_batch, classes), np.float32)
        self.context.set_tensor_address(self.input_name, self.input.device_ptr)
        self.context.set_tensor_address(self.output_name, self.output.device_ptr)

    def run(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        rows = len(batch)
        if rows > self.max_batch:
            # The buffers hold the profile's max; callers split (models.backends.base.run_in_batches).
            raise ValueError(f"a batch of {rows} exceeds the engine's max batch {self.max_batch}")
        if rows == 0:
            return np.empty((0, self.output.host.shape[1]), dtype=np.float32)
        self.input.host[:rows] = batch
        self.allocator.upload(self.input, rows)
        if not self.context.set_input_shape(self.input_name, (rows, *self.sample_shape)):
            raise RuntimeError(f"TensorRT refused input shape {(rows, *self.sample_shape)}")
        if not self.context.execute_async_v3(self.allocator.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; its log above says why")
        self.allocator.download(self.output, rows)
        self.allocator.synchronize()
        return self.output.host[:rows].copy()

def create(name: str, model_path: Path, max_batch: int, options: BackendOptions) -> TrtBackend:
    return TrtBackend(model_path, options.tensorrt_precision, BatchProfile.up_to(max_batch),
                      EngineCache(options.engine_cache_dir))
