"""The machine a benchmark runs on: CPU name and ISA flags, available CPUs, package versions, a good ``round_to``.

Examples:
    >>> available_cpus() >= 1
    True
    >>> ort_platform() in ("amd64", "arm")
    True
"""

from __future__ import annotations

import os
import platform
from typing import Any

from pfgdf_plugin._util.threads import available_cpus

X86_MACHINES = ("x86_64", "amd64", "i386", "i686")


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo``, else what the `platform` module knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The ISA flags of the first CPU in ``/proc/cpuinfo`` (x86 ``flags``: ``avx2``, ``avx512f``, ...; ARM
    ``Features``: ``asimd``, ``asimddp``, ...); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def ort_platform() -> str:
    """This machine as ONNX Runtime's ORT-format converter names target platforms: ``"arm"`` or ``"amd64"``."""
    return "arm" if platform.machine().lower().startswith(("arm", "aarch64")) else "amd64"


def int8_kernels(flags: set[str] | None = None, machine: str | None = None) -> str:
    """Which integer kernels ONNX Runtime's CPU provider uses for uint8 x int8 (U8S8) convolutions and matmuls.

    ``"vnni"``: x86 with AVX-512 VNNI or AVX-VNNI (exact 32-bit accumulation); ``"x86-no-vnni"``: older x86
    (AVX2 / AVX-512 without VNNI), whose ``vpmaddubsw`` kernels add pairs of u8 x s8 products in 16 bits and
    saturate when both factors are large; ``"other"``: ARM and the rest.

    Examples:
        >>> int8_kernels({"avx2", "fma"}, "x86_64"), int8_kernels({"avx512f", "avx512_vnni"}, "x86_64")
        ('x86-no-vnni', 'vnni')
    """
    flags = cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    if machine not in X86_MACHINES:
        return "other"
    return "vnni" if {"avx512_vnni", "avx_vnni"} & flags else "x86-no-vnni"


def recommended_round_to(flags: set[str] | None = None, machine: str | None = None) -> int:
    """A ``round_to`` for `pfgdf_plugin.pruning.api.prune` that keeps convs on ONNX Runtime's fast path here.

    On x86, ONNX Runtime runs convs in its blocked NCHWc layout: 16-channel blocks with AVX-512F, 8 without.
    A conv whose input channels are not a multiple of 4 leaves that path (plus layout reorders around it); other
    counts are padded up to the block, which wastes the padded MACs (docs/deployment.md has the measurements).
    Elsewhere (ARM) 8 is returned as a safe multiple of NEON's 4-wide vectors; that case is not measured.

    Args:
        flags: another CPU's ISA flags (default: this one's).
        machine: another CPU's machine name, e.g. ``"x86_64"`` (default: this one's).

    Returns:
        16 on x86 with AVX-512F, else 8.

    Examples:
        >>> recommended_round_to() in (8, 16)
        True
        >>> recommended_round_to({"avx2"}, "x86_64"), recommended_round_to({"avx512f"}, "x86_64")
        (8, 16)
    """
    flags = cpu_flags() if flags is None else flags
    if (platform.machine() if machine is None else machine).lower() in X86_MACHINES:
        return 16 if "avx512f" in flags else 8
    return 8


def environment() -> dict[str, Any]:
    """Hardware, OS, load and package versions, recorded with every benchmark.

    Returns:
        ``cpu``, ``machine``, ``cpus_available``, ``cpu_count``, ``platform``, ``load_average`` (``None`` where
        the OS has none) and ``versions`` (python, pfgdf_plugin, torch, torch_pruning, onnx, onnxruntime, numpy).
    """
    import numpy as np
    import onnx
    import onnxruntime
    import torch
    import torch_pruning as tp

    from pfgdf_plugin import __version__

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cpus_available": available_cpus(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load,
        "versions": {
            "python": platform.python_version(),
            "pfgdf_plugin": __version__,
            "torch": torch.__version__,
            "torch_pruning": tp.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
    }
