"""Facts about the machine this process runs on: CPU (model, ISA features that decide INT8 speed),
load average, CUDA GPU (through the driver library, no Python GPU package), Jetson module,
TensorRT version.

Torch-free and import-light: the device benchmark, the INT8 stage (which records the CPU it was
calibrated on) and the TensorRT runner use it. Sources: ``/proc/cpuinfo`` (Linux), ``os.getloadavg``
(Unix), the CUDA driver API (``cuInit``, ``cuDeviceGetName``, ``cuDeviceGetAttribute`` with
``CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR`` = 75/76, from ``cuda.h``) and the device tree
(``/proc/device-tree/model``) on a Jetson.
"""

from __future__ import annotations

import ctypes
import importlib.util
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
