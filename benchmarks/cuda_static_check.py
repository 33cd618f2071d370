"""Compile the CUDA kernels without a GPU and print what the compiler says about them.

    pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvcc-cu12   # NVRTC and ptxas, no GPU needed
    python benchmarks/cuda_static_check.py [--arch sm_90]

For each kernel and block shape: registers, spills and shared memory from ptxas, and the counts
of multiply-adds, shared-memory reads and global reads in the PTX that NVRTC emits (the same
compiler CuPy uses): static instruction counts, so the tiles kernel's loops (sizes known only at
run time, not unrolled) count once, and the strips kernel's (unrolled) count per pixel of a
thread's strip. A static view only: speed needs a GPU (benchmarks/gpu_speed.py).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import datetime
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from skimage_trd.kernels import cuda as K


def _nvidia_path(package, *parts):
    spec = importlib.util.find_spec(f"nvidia.{package}")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"nvidia.{package} not found: pip install nvidia-cuda-nvrtc-cu12 "
                         "nvidia-cuda-nvcc-cu12")
    return Path(list(spec.submodule_search_locations)[0], *parts)


def compile_ptx(nvrtc, source, arch, fast_math):
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernel.cu", 0, None,
                                None):
        raise RuntimeError("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture=compute_{arch.split('_')[1]}".encode()]
    opts += [b"--use_fast_math"] if fast_math else []
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if rc:
        raise RuntimeError(f"NVRTC failed:\n{log.value.decode()}")
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    return ptx.value.decode()


def ptxas_report(ptxas, ptx, arch):
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "kernel.ptx"
        path.write_text(ptx)
        res = subprocess.run([str(ptxas), f"-arch={arch}", "-v", "-o", "/dev/null", str(path)],
                             capture_output=True, text=True, check=True)
    text = res.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return int(regs.group(1)), int(spill.group(1)) if spill else 0


def ptx_counts(ptx):
    counts = collections.Counter()
    for line in ptx.splitlines():
        op = line.strip().split(" ")[0].split("\t")[0]
        if op.startswith("@"):
            continue
        for key in ("fma", "ld.shared", "ld.global"):
            if op.startswith(key):
                counts[key] += 1
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args(argv)
    nvrtc = ctypes.CDLL(str(next(_nvidia_path("cuda_nvrtc", "lib").glob("libnvrtc.so*"))))
    ptxas = _nvidia_path("cuda_nvcc", "bin", "ptxas")
    print(f"# CUDA kernels compiled for {args.arch} without a GPU; date {datetime.date.today()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print("| kernel | model | threads | pixels per thread | shared memory (KB) | registers "
          "| spill bytes | fma | ld.shared | ld.global |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("float32", "float64"):
        ptx = compile_ptx(nvrtc, K.tiles_source(name), args.arch, name == "float32")
        regs, spill = ptxas_report(ptxas, ptx, args.arch)
        c = ptx_counts(ptx)
        t = K.TILES[name]
        shared = K.tiles_shared_bytes(name, 3)
        print(f"| tiles {name} | any (shared memory for 7x7) | {t}x{t} | 1 | {shared / 1e3:.1f} "
              f"| {regs} | {spill} | {c['fma']} | {c['ld.shared']} | {c['ld.global']} |")
    shapes = ((8, 8, 0), (4, 16, 0), (8, 16, 0), (16, 4, 0), (8, 8, 1), (4, 16, 1), (8, 16, 1),
              (4, 8, 1))
    for size, n_filters in ((5, 24), (7, 48), (9, 80)):
        for rows, per_thread, taps in shapes if size < 9 else ((8, 8, 0), (8, 8, 1)):
            g = K.strip_geometry(size, n_filters, rows, per_thread, taps_in_registers=bool(taps))
            ptx = compile_ptx(nvrtc, K.strips_source(g["defines"]), args.arch, True)
            regs, spill = ptxas_report(ptxas, ptx, args.arch)
            c = ptx_counts(ptx)
            print(f"| strips float32{' taps in registers' if taps else ''} "
                  f"| {size}x{size}, {n_filters} filters | 32x{rows} "
                  f"| {per_thread} (forward {g['defines']['PF']}) "
                  f"| {g['shared_bytes'] / 1e3:.1f} | {regs} | {spill} | {c['fma']} "
                  f"| {c['ld.shared']} | {c['ld.global']} |")


if __name__ == "__main__":
    main()
