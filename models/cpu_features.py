"""The CPU features that decide how fast, and whether exactly, the classifier's integer and bf16 kernels run."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo flag -> the name people know it by. x86: AVX2 and AVX-512 widen the kernels, VNNI adds 8-bit dot
# products in int32 (without it, u8 x s8 pairs are summed in saturating int16), AMX multiplies tiles. ARM: NEON,
# and the dot-product extension that plays VNNI's part.
X86_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "avx512_bf16": "AVX512-BF16", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16"}
ARM_FLAGS = {"asimd": "NEON", "asimddp": "NEON-DOTPROD", "i8mm": "I8MM", "bf16": "BF16", "sve": "SVE"}


@dataclass(frozen=True)
class CpuFeatures:
    machine: str  # x86_64, aarch64, arm64, ...
    model: str
    features: tuple[str, ...]  # names from X86_FLAGS / ARM_FLAGS present on this CPU

    @property
    def has_int8_dot(self) -> bool:
        """Whether 8-bit products are summed straight into int32 (VNNI, AMX or ARM's dot product)."""
        return bool({"AVX512-VNNI", "AVX-VNNI", "AMX-INT8", "NEON-DOTPROD"} & set(self.features))

    @property
    def has_fast_bf16(self) -> bool:
        return bool({"AVX512-BF16", "AMX-BF16"} & set(self.features))

    def describe(self) -> str:
        return f"{self.model or self.machine} ({', '.join(self.features) or 'no vector extensions found'})"


def read_cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFeatures:
    """This machine's CPU; where /proc/cpuinfo is missing (macOS, Windows) the feature list is empty."""
    machine = platform.machine()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return CpuFeatures(machine, platform.processor(), ())
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "Model", "CPU part") and not model:
            model = value.strip()
    known = X86_FLAGS if "avx2" in flags or "sse2" in flags else ARM_FLAGS
    return CpuFeatures(machine, model, tuple(name for flag, name in known.items() if flag in flags))
