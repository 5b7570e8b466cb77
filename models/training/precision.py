"""Which arithmetic training runs in: bf16 autocast only where it is faster than fp32.

On an AVX2-only CPU (no AVX512-BF16 or AMX-BF16) one ResNet50 training step at 64 px ran at 2 images/s in bf16
autocast against 24 in fp32: the CPU emulates bf16 there. CUDA GPUs from Ampere on do bf16 natively.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.cpu_features import CpuFeatures

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Precision:
    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"


def choose_precision(requested: str, device_type: str, cpu: CpuFeatures) -> Precision:
    """`requested` is auto, bf16 or fp32; auto picks bf16 on a CUDA GPU or a CPU with native bf16, else fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {requested!r}")
    if requested != "auto":
        return Precision(requested == "bf16", f"{requested} as requested")
    if device_type == "cuda":
        return Precision(True, "a CUDA GPU computes bf16 natively")
    if cpu.has_fast_bf16:
        return Precision(True, f"the CPU has native bf16 ({cpu.describe()})")
    return Precision(False, f"the CPU lacks AVX512-BF16 and AMX-BF16, where bf16 autocast is slower than fp32 "
                            f"({cpu.describe()})")
