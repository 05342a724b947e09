"""Facts about the machine this process runs on: CPU (model, ISA features that decide INT8 speed),
load average, CUDA GPU (through the driver library, no Python GPU package), Jetson module,
TensorRT version.

Usable CPUs (:func:`usable_cpus`) are what this process may run on: the affinity mask
(``os.sched_getaffinity``: ``taskset``, ``docker --cpuset-cpus``) and the cgroup CPU quota
(``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of v1: ``docker --cpus``,
Kubernetes limits), the smaller of the two — not ``os.cpu_count()``, the host's logical CPUs.
Thread counts follow it: ONNX Runtime's default pool (one thread per physical core) ignores both
and OMP_NUM_THREADS (microsoft/onnxruntime#29510), so an unpinned default oversubscribes a quota.

Torch-free and import-light: the device benchmark, the INT8 stage (which records the CPU it was
calibrated on) and the TensorRT runner use it. Sources: ``/proc/cpuinfo`` (Linux), ``os.getloadavg``
(Unix), the CUDA driver API (``cuInit``, ``cuDeviceGetName``, ``cuDeviceGetAttribute`` with
``CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR`` = 75/76, from ``cuda.h``) and the device tree
(``/proc/device-tree/model``) on a Jetson.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import math
import os
import platform
from pathlib import Path
from typing import Any

# cuda.h, CUdevice_attribute
_CU_ATTR_CC_MAJOR = 75
_CU_ATTR_CC_MINOR = 76


def cpu_info() -> dict[str, Any]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "f16c", "fma", "asimd", "asimddp", "i8mm", "sve"]
    return {"cpu": name, "cpu_features": [f for f in keep if f in flags], "arch": platform.machine()}


_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@functools.cache
def _this_cpu_saturates() -> bool:
    return int8_saturates(cpu_info())


def int8_saturates(info: dict[str, Any] | None = None) -> bool:
    """True on an x86 CPU without VNNI (``avx512_vnni``, ``avx_vnni``) or AMX-INT8: ONNX Runtime's
    u8s8 INT8 kernels there use (V)PMADDUBSW, whose int16 sum of two u8 x s8 products saturates
    (ONNX Runtime quantization guide, "When to use reduce_range"). ``info``: :func:`cpu_info`'s dict
    (this CPU when None). False on ARM and other architectures (their dot-product kernels
    accumulate in int32)."""
    if info is None:  # read /proc/cpuinfo once: every INT8 candidate asks
        return _this_cpu_saturates()
    if str(info.get("arch", "")).lower() not in _X86:
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(info.get("cpu_features", []))


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs the cgroup quota allows (quota / period, e.g. 1.5), or None when unlimited or unreadable.
    Reads cgroup v2 ``ROOT/cpu.max`` ("max 100000" or "150000 100000"), else v1
    ``ROOT/cpu/cpu.cfs_quota_us`` (-1 = unlimited) and ``cpu.cfs_period_us``."""
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for d in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((d / "cpu.cfs_quota_us").read_text())
            period_us = int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.sched_getaffinity``; ``os.cpu_count()`` where
    the platform has no affinity call)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: min(affinity mask, ceil(cgroup quota)), at least 1."""
    n = affinity_cpus()
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)


def cpu_budget() -> dict[str, Any]:
    """What the report records: ``usable_cpus``, ``affinity_cpus``, ``cgroup_cpu_quota`` (None:
    none), ``cpu_count`` (the host's logical CPUs)."""
    return {"usable_cpus": usable_cpus(), "affinity_cpus": affinity_cpus(), "cgroup_cpu_quota": cgroup_cpu_quota(),
            "cpu_count": os.cpu_count()}


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (Unix), None elsewhere."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cuda_device(index: int = 0) -> tuple[str, str] | None:
    """``(name, "major.minor")`` of CUDA device ``index`` through the driver API (``libcuda``), or
    None when there is no NVIDIA driver or no such device. Imports no Python GPU package."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    try:
        if lib.cuInit(0) != 0:
            return None
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= index:
            return None
        dev = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(dev), index) != 0:
            return None
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, dev)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, dev)
    except AttributeError:  # not a CUDA driver library
        return None
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def jetson_board() -> str | None:
    """The module name from the device tree (``/proc/device-tree/model``) on a Jetson, else None."""
    try:
        text = Path("/proc/device-tree/model").read_bytes().decode(errors="replace").strip("\x00 \n")
    except OSError:
        return None
    return text or None


def installed_tensorrt_version() -> str | None:
    """``tensorrt.__version__`` when TensorRT's Python bindings import, else None."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt  # noqa: PLC0415 - lazy on purpose

        return str(tensorrt.__version__)
    except Exception:  # a broken install (missing libnvinfer) counts as absent
        return None
