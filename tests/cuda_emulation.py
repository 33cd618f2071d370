"""Run the CUDA kernels' sources on the CPU: compiled as C++, threads emulated.

The GPU kernels in ``skimage_trd.kernels.cuda`` are plain CUDA C. Here the same source text is
compiled with the system's C++ compiler after a prelude that supplies CUDA's names: a thread of a
block is a coroutine (``ucontext``) with its own stack and ``threadIdx``, ``__syncthreads()``
suspends it until every thread of the block has arrived, and dynamic shared memory is one buffer
per block. Blocks run one after the other. Between two barriers the threads run one after the
other, in ascending order in one phase and descending in the next, so a missing barrier shows
whichever thread would have to write first (a real GPU interleaves them any way it likes); a
barrier that not all threads of the block reach is an error (on a GPU: a hang or worse). That
tests the kernels' index arithmetic, halos, shared-memory layout and synchronisation without a
GPU (not their speed, nor NVRTC's dialect). Coroutines instead of OS threads: a barrier of 1024
threads costs microseconds, not a storm of wake-ups.

``fake_cupy()`` returns a stand-in for the ``cupy`` module (NumPy arrays, these emulated
kernels) so that ``run_model(..., backend="cupy")`` runs end to end on the CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import types
from pathlib import Path

import numpy as np

CXX = shutil.which("g++") or shutil.which("c++")

_PRELUDE = r"""
#if defined(__APPLE__)
#define _XOPEN_SOURCE 600
#endif
#include <cmath>
#include <cstddef>
#include <functional>
#include <math.h>
#include <memory>
#include <ucontext.h>
#include <vector>
struct dim3_emu { int x, y, z; };
static dim3_emu threadIdx;  // set by the scheduler before it resumes a thread
static dim3_emu blockIdx;
static ucontext_t emu_scheduler;  // the launcher's loop over a block's threads
static ucontext_t* emu_threads;
static int emu_current;
static bool emu_returned;
static inline void emu_syncthreads() {  // back to the scheduler until all threads are here
    swapcontext(&emu_threads[emu_current], &emu_scheduler);
}
static unsigned char* emu_shared;
struct float4 { float x, y, z, w; };
template <class P> static inline P __ldg(const P* p) { return *p; }
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(n)
#define __syncthreads() emu_syncthreads()
#define SHARED_ARRAY(type, name) type* name = reinterpret_cast<type*>(emu_shared)
"""

_LAUNCHER = r"""
static std::function<void()> emu_kernel;
static void emu_thread_main() {{ emu_kernel(); emu_returned = true; }}

// Returns 0; 1 when a block wrote past its dynamic shared memory (a guard region after it);
// 2 when some threads of a block returned while others waited at a __syncthreads().
extern "C" int emu_launch(int gx, int gy, int tx, int ty, long shared_bytes, {params}) {{
    const long guard = 256, stack_bytes = 128 * 1024;
    const int n = tx * ty;
    std::vector<double> shared((shared_bytes + guard + 7) / 8);
    emu_shared = reinterpret_cast<unsigned char*>(shared.data());
    std::unique_ptr<char[]> stacks(new char[n * stack_bytes]);
    std::vector<ucontext_t> threads(n);
    std::vector<char> done(n);
    emu_threads = threads.data();
    emu_kernel = [=] {{ {name}({args}); }};
    for (int by = 0; by < gy; ++by)
        for (int bx = 0; bx < gx; ++bx) {{
            // NaN everywhere: a read of shared memory that no thread wrote poisons the result
            for (long b = 0; b < shared_bytes; ++b) emu_shared[b] = 0xFF;
            for (long b = 0; b < guard; ++b) emu_shared[shared_bytes + b] = 0xA5;
            blockIdx = dim3_emu{{bx, by, 0}};
            for (int i = 0; i < n; ++i) {{
                getcontext(&threads[i]);
                threads[i].uc_stack.ss_sp = stacks.get() + i * stack_bytes;
                threads[i].uc_stack.ss_size = stack_bytes;
                threads[i].uc_link = &emu_scheduler;
                makecontext(&threads[i], emu_thread_main, 0);
                done[i] = 0;
            }}
            for (int phase = 0;; ++phase) {{  // the code up to the next barrier, thread by thread
                int returned = 0, waiting = 0;
                for (int k = 0; k < n; ++k) {{
                    const int i = phase % 2 ? n - 1 - k : k;
                    if (done[i]) continue;
                    emu_current = i;
                    threadIdx = dim3_emu{{i % tx, i / tx, 0}};
                    emu_returned = false;
                    swapcontext(&emu_scheduler, &threads[i]);
                    if (emu_returned) {{ done[i] = 1; ++returned; }} else ++waiting;
                }}
                if (waiting == 0) break;
                if (returned) return 2;
            }}
            for (long b = 0; b < guard; ++b)
                if (emu_shared[shared_bytes + b] != 0xA5) return 1;
        }}
    return 0;
}}
"""


_SCALARS = {"int": np.dtype(np.int32), "float": np.dtype(np.float32),
            "double": np.dtype(np.float64)}
_CTYPES = {np.dtype(np.int32): ctypes.c_int, np.dtype(np.float32): ctypes.c_float,
           np.dtype(np.float64): ctypes.c_double}


def _cache_dir():
    path = Path(tempfile.gettempdir()) / f"skimage-trd-cuda-emulation-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class EmulatedKernel:
    """Callable like ``cupy.RawKernel``: ``kernel(grid, block, args, shared_mem=...)``."""

    def __init__(self, code, name, options=()):
        match = re.search(r'extern "C" __global__ void(?: __launch_bounds__\([^)]*\))?\s+'
                          + re.escape(name) + r"\(([^)]*)\)", code)
        if match is None:
            raise ValueError(f"kernel {name} not found in the source")
        params = " ".join(match.group(1).split())
        names = [p.split()[-1].lstrip("*") for p in params.split(",")]
        # the C type of each parameter: a pointer, or a scalar (T as #defined in the source)
        defines = dict(re.findall(r"#define (\w+) (\w+)", code))
        self._params = [None if "*" in p else _SCALARS[defines.get(p.split()[-2], p.split()[-2])]
                        for p in params.split(",")]
        source = _PRELUDE + code + _LAUNCHER.format(params=params, name=name,
                                                    args=", ".join(names))
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        lib = _cache_dir() / f"{digest}.so"
        if not lib.exists():
            with tempfile.TemporaryDirectory() as work:
                src, tmp = Path(work) / "kernel.cpp", Path(work) / "kernel.so"
                src.write_text(source)
                subprocess.run([CXX, "-std=c++17", "-O1", "-shared", "-fPIC",
                                "-Wno-unknown-pragmas", "-o", str(tmp), str(src)], check=True,
                               capture_output=True, text=True)
                shutil.move(tmp, lib)
        self._launch = ctypes.CDLL(str(lib)).emu_launch
        self._launch.argtypes = [ctypes.c_int] * 4 + [ctypes.c_long] + [
            ctypes.c_void_p if dtype is None else _CTYPES[dtype] for dtype in self._params]
        self._launch.restype = ctypes.c_int
        self.max_dynamic_shared_size_bytes = 48 * 1024
        self.launches = []

    def __call__(self, grid, block, args, shared_mem=0):
        """Launch like CUDA would, or raise where CUDA would fail."""
        self.launches.append((tuple(grid), tuple(block), shared_mem))
        block = tuple(block) + (1,) * (3 - len(block))
        grid = tuple(grid) + (1,) * (3 - len(grid))
        assert block[2] == 1 and grid[2] == 1 and block[0] * block[1] <= 1024
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError(f"{shared_mem} bytes of dynamic shared memory requested, "
                               f"{self.max_dynamic_shared_size_bytes} allowed (CUDA would fail)")
        if len(args) != len(self._params):
            raise TypeError(f"{len(args)} arguments for {len(self._params)} parameters")
        converted = []
        for a, dtype in zip(args, self._params):
            if dtype is None:
                assert isinstance(a, np.ndarray) and a.flags.c_contiguous, "pointer parameter"
                converted.append(a.ctypes.data)
            else:
                assert not isinstance(a, np.ndarray) and np.asarray(a).dtype == dtype, (
                    f"scalar parameter of type {dtype} given {a!r}")
                converted.append(a.item())
        status = self._launch(grid[0], grid[1], block[0], block[1], shared_mem, *converted)
        if status == 1:
            raise RuntimeError("a block wrote past its dynamic shared memory")
        if status == 2:
            raise RuntimeError("some threads of a block returned while others waited at "
                               "__syncthreads() (a GPU would hang or misbehave)")


class _RawModule:
    def __init__(self, code, options=()):
        self.code, self.options = code, options

    def get_function(self, name):
        return EmulatedKernel(self.code, name, self.options)


def fake_cupy():
    """A stand-in for the ``cupy`` module: NumPy arrays, kernels emulated on the CPU."""
    cp = types.ModuleType("cupy")
    cp.ndarray = np.ndarray
    cp.asarray = np.asarray
    cp.ascontiguousarray = np.ascontiguousarray
    cp.empty_like = np.empty_like
    cp.pad = np.pad
    cp.isfinite = np.isfinite
    cp.RawKernel = EmulatedKernel
    cp.RawModule = _RawModule
    device = types.SimpleNamespace(id=0)
    # an H100's opt-in shared memory per block; a test may set cp.max_shared_bytes lower
    cp.max_shared_bytes = 227 * 1024
    attribute = 97  # cudaDevAttrMaxSharedMemoryPerBlockOptin

    def get_attribute(attr, dev):
        assert attr == attribute and dev == device.id
        return cp.max_shared_bytes

    cp.cuda = types.SimpleNamespace(
        Device=lambda *a: device,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, deviceGetAttribute=get_attribute,
                                      cudaDevAttrMaxSharedMemoryPerBlockOptin=attribute),
    )
    return cp
