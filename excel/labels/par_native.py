"""The CPU form of PAR (docs/method.md §5) in C: excel/labels/par_kernel.c, built on first use with the
system C compiler and loaded with ctypes.

The library is cached under ``$EXCEL_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/excel`` or
``~/.cache/excel``), one file per source, compiler, flags and CPU, written atomically so that
concurrent processes may build it at once. Without a compiler (``$CC``, else cc, gcc or clang) or
the C source, when the build fails, or with ``EXCEL_NATIVE_PAR=0``, :func:`load_kernels` returns
None (with one warning for a failed build) and PAR falls back to its portable torch form.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["load_kernels", "native_affinity", "native_propagate"]

SOURCE = Path(__file__).with_name("par_kernel.c")
CACHE_ENV, SWITCH_ENV = "EXCEL_KERNEL_CACHE", "EXCEL_NATIVE_PAR"
BUILD_TIMEOUT_S = 120
# Most specific first: the first flag set the compiler accepts is kept.
FLAG_SETS = (
    ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"],
    ["-O3", "-march=native", "-fno-math-errno"],
    ["-O3", "-fno-math-errno"],
)
_POINTER, _INT64, _FLOAT, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "excel"


def _cpu_signature() -> str:
    """The CPU's feature flags (Linux), so that a cache shared between machines never runs foreign code."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(compiler: str, flags: Sequence[str], target: Path) -> bool:
    """Compile SOURCE into ``target`` (atomically); False when the compiler rejects it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", temporary],
                                capture_output=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            return False
        os.replace(temporary, target)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    library.par_affinity_f32.restype = None
    library.par_affinity_f32.argtypes = [_POINTER, _POINTER, *[_INT64] * 6, _POINTER, _POINTER, _FLOAT, _FLOAT,
                                         _POINTER, _POINTER, _INT]
    library.par_propagate_f32.restype = _INT
    library.par_propagate_f32.argtypes = [_POINTER, _POINTER, _POINTER, _INT64, _INT64, _POINTER, *[_INT64] * 4,
                                          _POINTER, _INT64, _INT]
    return library


@lru_cache(maxsize=None)
def load_kernels() -> ctypes.CDLL | None:
    """The compiled kernels, building them on first use; None when they cannot be had (see the module doc)."""
    if os.environ.get(SWITCH_ENV, "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not SOURCE.is_file():
        return None
    source = SOURCE.read_bytes()
    for flags in FLAG_SETS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                         platform.machine().encode(), _cpu_signature().encode()])).hexdigest()
        target = _cache_dir() / f"par_kernel_{key[:20]}.so"
        if target.exists() or _build(compiler, flags, target):
            try:
                return _declare(ctypes.CDLL(str(target)))
            except OSError:
                continue
    warnings.warn(f"could not build {SOURCE.name} with {compiler}; PAR uses its portable torch form", stacklevel=2)
    return None


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _kernels_for(*tensors: torch.Tensor) -> ctypes.CDLL:
    """The loaded kernels, after checking that ``tensors`` are contiguous float32 CPU tensors."""
    library = load_kernels()
    if library is None:
        raise RuntimeError(f"the native PAR kernels are not available (no C compiler, or {SWITCH_ENV}=0); "
                           "use PAR form 'sparse' or 'auto'")
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.dtype != torch.float32 or not tensor.is_contiguous():
            raise ValueError(f"the native PAR kernels take contiguous float32 CPU tensors, got {tensor.dtype} "
                             f"on {tensor.device} (contiguous: {tensor.is_contiguous()})")
    return library


def native_affinity(padded_image: torch.Tensor, margin: int, offsets: torch.Tensor, temperature: float, eps: float,
                    position: torch.Tensor, storage: torch.Tensor | None = None) -> torch.Tensor:
    """Neighbour weights from a replicate-padded float32 CPU image B×C×Hp×Wp → B×H×M×W (M = len(offsets)).

    offsets: M×2 int64 (dy, dx); position: M float32 added after the softmax. storage: optional
    contiguous float32 CPU tensor of at least B·H·M·W values that the weights are written into (the
    result is then a view of it), so that repeated calls reuse memory the system has already mapped.
    """
    library = _kernels_for(padded_image)
    batch, channels, padded_h, padded_w = padded_image.shape
    height, width, count = padded_h - 2 * margin, padded_w - 2 * margin, offsets.shape[0]
    threads = torch.get_num_threads()
    shape = (batch, height, count, width)
    if storage is None:
        weights = torch.empty(shape)
    else:
        _kernels_for(storage)
        size = math.prod(shape)
        if storage.numel() < size:
            raise ValueError(f"storage holds {storage.numel()} values, the weights need {size}")
        weights = storage.view(-1)[:size].view(shape)
    scratch = torch.empty(threads * (3 + channels) * width)
    dy, dx = offsets[:, 0].contiguous(), offsets[:, 1].contiguous()
    position = position.to(torch.float32).contiguous()
    library.par_affinity_f32(_pointer(padded_image), _pointer(weights), batch, channels, height, width, margin, count,
                             _pointer(dy), _pointer(dx), temperature, eps, _pointer(position), _pointer(scratch),
                             threads)
    return weights


def native_propagate(weights: torch.Tensor, padded_maps: torch.Tensor, margin: int, offsets: torch.Tensor,
                     iterations: int, counts: torch.Tensor | None = None) -> torch.Tensor:
    """``iterations`` PAR rounds on replicate-padded float32 maps B×K×Hp×Wp with weights B×H×M×W → B×K×H×W.

    counts: B ints; the maps of image b from counts[b] on are zero padding and are left as they are (None:
    all maps are real). ``padded_maps`` is used as work space (overwritten).
    """
    library = _kernels_for(weights, padded_maps)
    batch, maps, padded_h, padded_w = padded_maps.shape
    height, width = padded_h - 2 * margin, padded_w - 2 * margin
    real = torch.full((batch,), maps, dtype=torch.int64) if counts is None else counts.to("cpu", torch.int64)
    if real.shape != (batch,) or bool(((real < 0) | (real > maps)).any()):
        raise ValueError(f"counts must hold {batch} map counts between 0 and {maps}, got {real.tolist()}")
    real = real.contiguous()
    flat_offsets = (offsets[:, 0] * padded_w + offsets[:, 1]).contiguous()
    spare = torch.zeros_like(padded_maps)  # the padding maps of the result are zero in both buffers
    which = library.par_propagate_f32(_pointer(weights), _pointer(padded_maps), _pointer(spare), batch, maps,
                                      _pointer(real), height, width, margin, offsets.shape[0], _pointer(flat_offsets),
                                      iterations, torch.get_num_threads())
    result = spare if which else padded_maps
    return result[:, :, margin:margin + height, margin:margin + width]
