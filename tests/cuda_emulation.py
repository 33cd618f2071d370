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
static dim3_emu blockDim;  // set by the launcher
static dim3_emu gridDim;
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
    blockDim = dim3_emu{{tx, ty, 1}};
    gridDim = dim3_emu{{gx, gy, 1}};
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


_SCALARS = {"int": np.dtype(np.int32), "long long": np.dtype(np.int64),
            "float": np.dtype(np.float32), "double": np.dtype(np.float64)}
_CTYPES = {np.dtype(np.int32): ctypes.c_int, np.dtype(np.int64): ctypes.c_longlong,
           np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


def _cache_dir():
    path = Path(tempfile.gettempdir()) / f"skimage-trd-cuda-emulation-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _compile(source):
    """The C++ ``source`` as a loaded shared library (compiled once, cached by its hash)."""
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
    return ctypes.CDLL(str(lib))


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

        def scalar(param):
            ctype = " ".join(w for w in param.split()[:-1] if w != "const")
            return _SCALARS[defines.get(ctype, ctype)]

        self._params = [None if "*" in p else scalar(p) for p in params.split(",")]
        source = _PRELUDE + code + _LAUNCHER.format(params=params, name=name,
                                                    args=", ".join(names))
        self._launch = _compile(source).emu_launch
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


_ELEMENTWISE_TYPES = {"int32": "int", "int64": "long long", "float32": "float",
                      "float64": "double"}


class EmulatedElementwiseKernel:
    """Callable like ``cupy.ElementwiseKernel``, for the kernels of this package.

    Supported: one-letter type placeholders (their types from the arrays given for them),
    array parameters (the operation sees element ``i``), ``raw`` arrays (the whole array, as a
    pointer: ``w[k]`` and ``&w[k]`` work as on CuPy's ``CArray``), scalars (cast to their
    parameter's type, as CuPy does), and outputs allocated in the arrays' common shape. The
    operation runs for ``i = 0, 1, ...`` in turn, compiled as C++ after the ``preamble``, as
    CuPy places them (broadcasting and ``out=`` are not emulated).
    """

    def __init__(self, in_params, out_params, operation, name="kernel", preamble="", **kwargs):
        def parse(params, is_input):
            out = []
            for p in params.split(","):
                *words, t, pname = p.split()
                assert words in ([], ["raw"]), p
                out.append((t, pname, words == ["raw"], is_input))
            return out

        self._params = parse(in_params, True) + parse(out_params, False)
        self._n_in = len(self._params) - len(parse(out_params, False))
        self._operation, self._preamble = operation, preamble
        self._functions = {}  # (placeholder types, which parameters are arrays) -> function

    def _compile(self, types, arrays):
        def ctype(t):
            return _ELEMENTWISE_TYPES[types[t].name if t in types else t]

        params, loads = [], []
        for (t, pname, raw, is_input), array in zip(self._params, arrays):
            const = "const " if is_input else ""
            if not array:
                params.append(f"{ctype(t)} {pname}")
            elif raw:
                params.append(f"{const}{ctype(t)}* {pname}")
            else:
                params.append(f"{const}{ctype(t)}* emu_{pname}")
                loads.append(f"{const}{ctype(t)}& {pname} = emu_{pname}[i];")
        lines = [f"typedef {ctype(t)} {t};" for t in types]
        lines += [self._preamble,
                  f'extern "C" void emu_elementwise(long long emu_size, {", ".join(params)}) {{',
                  "    for (long long i = 0; i < emu_size; ++i) {",
                  *("        " + load for load in loads),
                  "        {", self._operation, "        }", "    }", "}"]
        return _compile(_PRELUDE + "\n".join(lines) + "\n").emu_elementwise

    def __call__(self, *args):
        if len(args) != self._n_in:
            raise TypeError(f"{len(args)} arguments for {self._n_in} inputs")
        types, shape = {}, None
        for (t, pname, raw, _), a in zip(self._params, args):
            if isinstance(a, np.ndarray):
                if t not in _ELEMENTWISE_TYPES:
                    assert types.setdefault(t, a.dtype) == a.dtype, f"{pname}: {a.dtype}"
                if not raw:
                    assert shape in (None, a.shape), "broadcasting is not emulated"
                    shape = a.shape
        assert shape is not None, "no array to take the outputs' shape from"

        def dtype(t):
            return types[t] if t in types else np.dtype(t)

        outs = [np.empty(shape, dtype(t)) for t, *_ in self._params[self._n_in:]]
        args = list(args) + outs
        arrays = tuple(isinstance(a, np.ndarray) for a in args)
        key = (tuple(sorted((t, d.name) for t, d in types.items())), arrays)
        if key not in self._functions:
            self._functions[key] = self._compile(types, arrays)
        converted = []
        for (t, pname, _, _), a in zip(self._params, args):
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous and a.dtype == dtype(t), pname
                converted.append(ctypes.c_void_p(a.ctypes.data))
            else:
                converted.append(_CTYPES[dtype(t)](np.asarray(a).astype(dtype(t)).item()))
        self._functions[key](ctypes.c_longlong(int(np.prod(shape))), *converted)
        return outs[0] if len(outs) == 1 else tuple(outs)


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
    cp.empty = np.empty
    cp.zeros = np.zeros
    cp.float32, cp.float64 = np.float32, np.float64
    cp.RawKernel = EmulatedKernel
    cp.RawModule = _RawModule
    cp.ElementwiseKernel = EmulatedElementwiseKernel
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
