"""CUDA memory and the stream for TensorRT: pinned host buffers paired with device buffers.

cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`) when importable, else PyTorch CUDA tensors;
TrtBackend sees only the `CudaAllocator` protocol, so its logic does not depend on which one is present.
"""

from __future__ import annotations

import ctypes
import math
import os
import weakref
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
from numpy.typing import DTypeLike, NDArray

from models.backends.base import BackendUnavailable


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "9.0"
    cuda_version: str  # the CUDA runtime's, "12.4"


@dataclass
class PinnedBuffer:
    """A page-locked host array and a device allocation of the same size; rows are along the first axis."""

    host: NDArray[Any]
    device_ptr: int
    owner: object  # keeps both allocations alive as long as the buffer is

    def nbytes(self, rows: int) -> int:
        return rows * math.prod(self.host.shape[1:]) * self.host.itemsize


class CudaAllocator(Protocol):
    stream: int  # the handle `execute_async_v3` takes; one stream per worker process

    def device_info(self) -> DeviceInfo: ...

    def buffer(self, shape: tuple[int, ...], dtype: DTypeLike) -> PinnedBuffer: ...

    def upload(self, buffer: PinnedBuffer, rows: int) -> None:
        """Queues a copy of the first `rows` rows host -> device on the stream."""
        ...

    def download(self, buffer: PinnedBuffer, rows: int) -> None:
        """Queues a copy of the first `rows` rows device -> host on the stream."""
        ...

    def synchronize(self) -> None: ...


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart as runtime  # older cuda-python; an ImportError here is reported by the caller
    return runtime


class CudaPythonAllocator:
    def __init__(self) -> None:
        self.cudart = _import_cudart()
        (count,) = self._call(self.cudart.cudaGetDeviceCount())
        if count < 1:
            raise BackendUnavailable("cuda-python sees no CUDA device")
        self._stream = self._call(self.cudart.cudaStreamCreate())[0]
        self.stream = int(self._stream)

    def _call(self, result: tuple[Any, ...]) -> tuple[Any, ...]:
        error, *values = result
        if error != self.cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA runtime call failed: {error}")
        return tuple(values)

    def device_info(self) -> DeviceInfo:
        (device,) = self._call(self.cudart.cudaGetDevice())
        (props,) = self._call(self.cudart.cudaGetDeviceProperties(device))
        (version,) = self._call(self.cudart.cudaRuntimeGetVersion())
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
        return DeviceInfo(name, f"{props.major}.{props.minor}", f"{version // 1000}.{version % 1000 // 10}")

    def buffer(self, shape: tuple[int, ...], dtype: DTypeLike) -> PinnedBuffer:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        (host_ptr,) = self._call(self.cudart.cudaMallocHost(nbytes))
        (device_ptr,) = self._call(self.cudart.cudaMalloc(nbytes))
        pinned = memoryview((ctypes.c_byte * nbytes).from_address(int(host_ptr))).cast("B")
        host = np.frombuffer(pinned, dtype=np.dtype(dtype)).reshape(shape)
        buffer = PinnedBuffer(host, int(device_ptr), owner=None)
        weakref.finalize(buffer, self._free, int(host_ptr), int(device_ptr))
        return buffer

    def _free(self, host_ptr: int, device_ptr: int) -> None:
        self.cudart.cudaFreeHost(host_ptr)
        self.cudart.cudaFree(device_ptr)

    def upload(self, buffer: PinnedBuffer, rows: int) -> None:
        self._call(self.cudart.cudaMemcpyAsync(buffer.device_ptr, buffer.host.ctypes.data, buffer.nbytes(rows),
                                               self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))

    def download(self, buffer: PinnedBuffer, rows: int) -> None:
        self._call(self.cudart.cudaMemcpyAsync(buffer.host.ctypes.data, buffer.device_ptr, buffer.nbytes(rows),
                                               self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))

    def synchronize(self) -> None:
        self._call(self.cudart.cudaStreamSynchronize(self._stream))


class TorchAllocator:
    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable(f"torch {torch.__version__} sees no CUDA device")
        self.torch = torch
        self._stream = torch.cuda.Stream()
        self.stream = int(self._stream.cuda_stream)

    def device_info(self) -> DeviceInfo:
        props = self.torch.cuda.get_device_properties(self.torch.cuda.current_device())
        return DeviceInfo(props.name, f"{props.major}.{props.minor}", str(self.torch.version.cuda))

    def buffer(self, shape: tuple[int, ...], dtype: DTypeLike) -> PinnedBuffer:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        host = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        device = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
        return PinnedBuffer(host.numpy().view(dtype).reshape(shape), device.data_ptr(), owner=(host, device))

    def upload(self, buffer: PinnedBuffer, rows: int) -> None:
        host, device = self._tensors(buffer)
        with self.torch.cuda.stream(self._stream):
            device[: buffer.nbytes(rows)].copy_(host[: buffer.nbytes(rows)], non_blocking=True)

    def download(self, buffer: PinnedBuffer, rows: int) -> None:
        host, device = self._tensors(buffer)
        with self.torch.cuda.stream(self._stream):
            host[: buffer.nbytes(rows)].copy_(device[: buffer.nbytes(rows)], non_blocking=True)

    def synchronize(self) -> None:
        self._stream.synchronize()

    @staticmethod
    def _tensors(buffer: PinnedBuffer) -> tuple[Any, Any]:
        tensors: tuple[Any, Any] = buffer.owner  # type: ignore[assignment]
        return tensors


@cache
def _allocator_for(pid: int) -> CudaAllocator:
    reasons = []
    for label, factory in (("cuda-python", CudaPythonAllocator), ("torch", TorchAllocator)):
        try:
            return factory()
        except ImportError as error:
            reasons.append(f"{label}: cannot import ({error})")
        except (BackendUnavailable, RuntimeError) as error:
            reasons.append(f"{label}: {error}")
    raise BackendUnavailable(f"no CUDA memory helper ({'; '.join(reasons)}); install cuda-python on a CUDA machine")


def process_allocator() -> CudaAllocator:
    """This process's allocator and stream; keyed by pid because a forked worker cannot reuse its parent's CUDA."""
    return _allocator_for(os.getpid())
