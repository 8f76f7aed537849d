"""CPU features that change which oneDNN kernels torch runs, and the workaround they select.

oneDNN's AVX2 1x1 backward-weights kernel corrupts the heap for a stride > 1 convolution of a
channels_last input with fewer than 8 channels (``scripts/onednn_avx2_repro.py`` reproduces it
with torch alone): the process aborts or segfaults on one thread, and spins forever or returns a
wrong gradient on two. oneDNN picks that kernel when its ISA is in the AVX2 family: an x86-64 CPU
with AVX2 but without AVX-512 (AMD Zen 1-3, Intel before Skylake-SP and most client parts), or
``ONEDNN_MAX_CPU_ISA=AVX2*`` on a newer one. On such a machine the project's ResNets compute those
convolutions as a stride-1 convolution of the subsampled input (``x[:, :, ::s, ::s]``), the same
arithmetic on the same values, which oneDNN handles. Nothing else changes, and machines that do
not need it (AVX-512, arm64, AVX-only) run the stock path.

``HEIST_ONEDNN_WORKAROUND`` = ``auto`` (default: from the CPU's features), ``on`` or ``off``.
The decision is made once per process and logged once (logger ``heist.cpu``).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("heist.cpu")

ENV_WORKAROUND = "HEIST_ONEDNN_WORKAROUND"
# oneDNN's avx512_core needs all of these (its CPU dispatcher's check).
AVX512_CORE_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
SIMD_CHANNELS_AVX2 = 8  # 8 float32 lanes: inputs with fewer channels take the broken path


@dataclass(frozen=True)
class OneDnnIsa:
    family: str  # "avx512", "avx2", "older" (AVX, SSE) or "non-x86"
    reason: str

    @property
    def avx2_family(self) -> bool:
        return self.family == "avx2"


def _cpuinfo_field(names: tuple[str, ...], cpuinfo: str | None = None) -> str | None:
    """The first processor's value of the first of ``names`` in ``/proc/cpuinfo`` (None where absent)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (empty where there is none)."""
    return frozenset((_cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    return _cpuinfo_field(("model name",), cpuinfo) or platform.processor() or platform.machine()


def onednn_isa(machine: str | None = None, flags: frozenset[str] | None = None, env: Mapping[str, str] | None = None) -> OneDnnIsa:
    """Which instruction-set family oneDNN's CPU kernels will use in this process.

    The CPU's flags, capped by ``ONEDNN_MAX_CPU_ISA`` (or its old name ``DNNL_MAX_CPU_ISA``),
    which oneDNN reads once, at its first use."""
    machine = (machine or platform.machine()).lower()
    env = os.environ if env is None else env
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return OneDnnIsa("non-x86", f"machine {machine}")
    flags = cpu_flags() if flags is None else flags
    if AVX512_CORE_FLAGS <= flags:
        hw = "avx512"
    elif "avx2" in flags:
        hw = "avx2"
    else:
        hw = "older"
    cap = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap.startswith("AVX2") and hw in ("avx512", "avx2"):
        return OneDnnIsa("avx2", f"ONEDNN_MAX_CPU_ISA={cap} on a CPU with {hw}")
    if cap.startswith(("AVX", "SSE")) and not cap.startswith(("AVX2", "AVX512", "AVX10")):
        return OneDnnIsa("older", f"ONEDNN_MAX_CPU_ISA={cap}")
    return OneDnnIsa(hw, f"CPU flags ({hw})" + (f", ONEDNN_MAX_CPU_ISA={cap}" if cap else ""))


def decide_workaround(isa: OneDnnIsa, setting: str) -> bool:
    setting = setting.strip().lower() or "auto"
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{ENV_WORKAROUND} must be auto, on or off, got {setting!r}")
    return isa.avx2_family if setting == "auto" else setting == "on"


_override: bool | None = None


def set_strided_pointwise_workaround(active: bool | None) -> None:
    """Force the workaround on or off in this process (``None``: back to the start-up decision).
    For benchmarks and tests; users set ``HEIST_ONEDNN_WORKAROUND``."""
    global _override
    _override = active


@lru_cache(maxsize=1)
def _startup_decision() -> bool:
    isa = onednn_isa()
    active = decide_workaround(isa, os.environ.get(ENV_WORKAROUND, "auto"))
    if active:
        log.warning("oneDNN runs its AVX2 kernels here (%s): 1x1 stride-2 convolutions of inputs with fewer than %d "
                    "channels are computed on the subsampled input (oneDNN heap corruption, scripts/onednn_avx2_repro.py; "
                    "%s=off disables)", isa.reason, SIMD_CHANNELS_AVX2, ENV_WORKAROUND)
    else:
        log.info("oneDNN ISA: %s; no convolution workaround", isa.reason)
    return active


def strided_pointwise_workaround() -> bool:
    """Whether 1x1 stride > 1 convolutions of narrow inputs must avoid oneDNN's AVX2 kernel."""
    return _startup_decision() if _override is None else _override


def needs_subsampled_pointwise(in_channels: int, kernel_size: tuple[int, ...], stride: tuple[int, ...], padding) -> bool:
    """True when a convolution with these settings would take the broken kernel in this process."""
    return (in_channels < SIMD_CHANNELS_AVX2 and all(k == 1 for k in kernel_size) and any(s > 1 for s in stride)
            and padding in ((0, 0), 0, "valid") and strided_pointwise_workaround())
