"""A STAND-IN for the `tensorrt` module and for CUDA memory, for tests only.

TensorRT and CUDA cannot exist on the machines these tests run on (no NVIDIA GPU, no TensorRT wheel), so the
glue in models/backends/tensorrt.py is exercised against this module instead. It mirrors the parts of the
TensorRT 10 / 11 Python API the glue uses and records every call the real API would receive: network creation
flags, builder flags, optimization-profile shapes, the serialized bytes, set_input_shape, set_tensor_address and
the stream handle given to execute_async_v3. TensorRT 11's module has no BuilderFlag.FP16 / INT8, as in the real
release, so glue that still sets them fails here too.

To keep the real code path behind it honest, the fake "engine" runs the ONNX it was built from with ONNX Runtime,
reading and writing the fake device memory the fake allocator hands out: results depend on the glue copying the
right rows to the right addresses.
"""

from __future__ import annotations

import enum
import json
import math
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import DTypeLike

from models.backends.cuda_memory import DeviceInfo, PinnedBuffer

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


@dataclass
class Calls:
    """Everything the glue asked of the stand-in, in order where order matters."""

    network_flags: list[int] = field(default_factory=list)
    builder_flags: list[str] = field(default_factory=list)
    memory_pool_limits: dict[str, int] = field(default_factory=dict)
    profile_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    parsed_initializer_types: set[int] = field(default_factory=set)  # ONNX elem types of the parsed weights
    parsed_op_types: set[str] = field(default_factory=set)  # ONNX operators of the parsed graph
    serialized: list[bytes] = field(default_factory=list)
    builds: int = 0
    input_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    tensor_addresses: dict[str, int] = field(default_factory=dict)
    execute_streams: list[int] = field(default_factory=list)


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1  # the bit position, as `1 << int(flag)` expects


class MemoryPoolType(enum.Enum):
    WORKSPACE = "WORKSPACE"


class TensorIOMode(enum.Enum):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class DataType(enum.Enum):
    FLOAT = "FLOAT"
    HALF = "HALF"


def nptype(dtype: DataType) -> type:
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16}[dtype]


class Logger:
    ERROR, WARNING, INFO = 1, 2, 3

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


@dataclass
class FakeTensor:
    name: str
    shape: tuple[int, ...]


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[FakeTensor] = []
        self.onnx_bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]


class FakeProfile:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, name: str, min: tuple[int, ...], opt: tuple[int, ...], max: tuple[int, ...]) -> None:  # noqa: A002
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))
        self.calls.profile_shapes.append((name, tuple(min), tuple(opt), tuple(max)))


class FakeConfig:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.profiles: list[FakeProfile] = []

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.calls.memory_pool_limits[pool.value] = size

    def set_flag(self, flag: Any) -> None:
        self.calls.builder_flags.append(flag.name)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeParser:
    def __init__(self, network: FakeNetwork, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse(self, onnx_bytes: bytes) -> bool:
        try:
            model = onnx.load_from_string(onnx_bytes)
        except Exception as error:  # the real parser reports errors through get_error, not exceptions
            self.errors.append(str(error))
            return False
        initializers = {tensor.name for tensor in model.graph.initializer}
        for graph_input in model.graph.input:
            if graph_input.name not in initializers:
                dims = tuple(dim.dim_value if dim.HasField("dim_value") else -1
                             for dim in graph_input.type.tensor_type.shape.dim)
                self.network.inputs.append(FakeTensor(graph_input.name, dims))
        self.network.onnx_bytes = onnx_bytes
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class FakeTensorRT(types.ModuleType):
    """One fake `tensorrt` module; its `calls` record what the glue did, its `memory` is the fake GPU's."""

    def __init__(self, version: str) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls = Calls()
        self.memory: dict[int, np.ndarray] = {}  # device pointer -> bytes, shared with FakeAllocator
        self.Logger = Logger
        self.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
        self.MemoryPoolType = MemoryPoolType
        self.TensorIOMode = TensorIOMode
        self.DataType = DataType
        self.nptype = nptype
        self.OnnxParser = FakeParser
        if int(version.split(".")[0]) < 11:
            # TensorRT 11 removed the weak-typing precision flags.
            self.BuilderFlag = enum.Enum("BuilderFlag", ["FP16", "INT8", "TF32"])
        module = self

        class Builder:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def create_network(self, flags: int = 0) -> FakeNetwork:
                module.calls.network_flags.append(flags)
                return FakeNetwork(flags)

            def create_builder_config(self) -> FakeConfig:
                return FakeConfig(module.calls)

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile(module.calls)

            def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes:
                module.calls.builds += 1
                model = onnx.load_from_string(network.onnx_bytes)
                module.calls.parsed_initializer_types |= {tensor.data_type for tensor in model.graph.initializer}
                module.calls.parsed_op_types |= {node.op_type for node in model.graph.node}
                (name, (min_shape, opt_shape, max_shape)), = config.profiles[0].shapes.items()
                header = {"version": module.__version__, "input": name, "max_batch": max_shape[0],
                          "flags": network.flags}
                serialized = ENGINE_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx_bytes
                module.calls.serialized.append(serialized)
                return serialized

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
                if not data.startswith(ENGINE_MAGIC):
                    return None
                header_line, onnx_bytes = data[len(ENGINE_MAGIC):].split(b"\n", 1)
                header = json.loads(header_line)
                if header["version"] != module.__version__:  # real engines only load in the TensorRT that built them
                    return None
                return FakeEngine(module, header, onnx_bytes)

        self.Builder = Builder
        self.Runtime = Runtime


class FakeEngine:
    def __init__(self, module: FakeTensorRT, header: dict[str, Any], onnx_bytes: bytes) -> None:
        self.module = module
        self.max_batch = int(header["max_batch"])
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        (graph_input,), (graph_output,) = self.session.get_inputs(), self.session.get_outputs()
        self.shapes = {graph_input.name: tuple(-1 if isinstance(d, str) else d for d in graph_input.shape),
                       graph_output.name: tuple(-1 if isinstance(d, str) else d for d in graph_output.shape)}
        self.modes = {graph_input.name: TensorIOMode.INPUT, graph_output.name: TensorIOMode.OUTPUT}

    @property
    def num_io_tensors(self) -> int:
        return len(self.shapes)

    def get_tensor_name(self, index: int) -> str:
        return list(self.shapes)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.modes[name]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.calls = engine.module.calls
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.input_shapes.append((name, tuple(shape)))
        if not 1 <= shape[0] <= self.engine.max_batch:
            return False
        self.input_shape = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.calls.tensor_addresses[name] = address
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.calls.execute_streams.append(stream_handle)
        assert self.input_shape is not None, "execute_async_v3 before set_input_shape"
        memory = self.engine.module.memory
        (input_name, output_name) = list(self.engine.shapes)
        count = math.prod(self.input_shape)
        faces = memory[self.addresses[input_name]].view(np.float32)[:count].reshape(self.input_shape)
        (out,) = self.engine.session.run(None, {input_name: faces})
        out = np.ascontiguousarray(out, dtype=np.float32).ravel()
        memory[self.addresses[output_name]].view(np.float32)[: out.size] = out
        return True


class FakeAllocator:
    """Stands in for cuda-python / torch CUDA memory: "device" buffers are numpy arrays in the fake module's memory,
    keyed by made-up device pointers; copies happen at once, so synchronize has nothing to wait for."""

    stream = 0x5EED

    def __init__(self, module: FakeTensorRT, device: DeviceInfo | None = None) -> None:
        self.module = module
        self.device = device or DeviceInfo("Fake GPU (stand-in)", "9.0", "12.4")
        self.next_pointer = 0x7F00_0000_0000
        self.uploads: list[int] = []

    def device_info(self) -> DeviceInfo:
        return self.device

    def buffer(self, shape: tuple[int, ...], dtype: DTypeLike) -> PinnedBuffer:
        host = np.zeros(shape, dtype=dtype)
        pointer = self.next_pointer
        self.next_pointer += (host.nbytes + 0xFFFF) & ~0xFFFF
        self.module.memory[pointer] = np.zeros(host.nbytes, dtype=np.uint8)
        return PinnedBuffer(host, pointer, owner=None)

    def upload(self, buffer: PinnedBuffer, rows: int) -> None:
        self.uploads.append(rows)
        nbytes = buffer.nbytes(rows)
        self.module.memory[buffer.device_ptr][:nbytes] = buffer.host.reshape(-1).view(np.uint8)[:nbytes]

    def download(self, buffer: PinnedBuffer, rows: int) -> None:
        nbytes = buffer.nbytes(rows)
        buffer.host.reshape(-1).view(np.uint8)[:nbytes] = self.module.memory[buffer.device_ptr][:nbytes]

    def synchronize(self) -> None:
        pass
