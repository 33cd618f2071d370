"""Explicit 16-lane float32 vectors for the Numba CPU kernels.

LLVM's loop vectoriser decides the vector width from the processor's tuning: on Intel AVX-512
processors it prefers 256-bit vectors, on AMD Zen 4/5 512-bit ones, and it keeps every
intermediate of a loop in memory. The stage kernels instead hold a block of outputs in registers
(register blocking, as a hand-written kernel does), which needs vectors as values. This module
gives Numba a 16-lane float32 vector type (``<16 x float>`` in LLVM, one zmm register with
AVX-512, two ymm registers with AVX2) and the handful of operations the kernels use, each a
few lines of LLVM IR that LLVM selects native instructions for on any x86 (or other) processor.

Loads and stores are unaligned; indices are element offsets into a 1-D array (no bounds check:
the kernels size their buffers so that whole vectors fit).
"""

from __future__ import annotations

import functools

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, models, register_model

from .influence import POLY_DEGREE, POLY_SEGMENTS

LANES = 16
_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)
_I32 = ir.IntType(32)
_IVEC = ir.VectorType(_I32, LANES)


@functools.cache
def has_avx512():
    """Whether Numba compiles for a processor with AVX-512F; ``NUMBA_CPU_FEATURES`` and
    ``NUMBA_CPU_NAME`` are honoured as Numba honours them."""
    features = config.CPU_FEATURES
    if features is None:
        if config.CPU_NAME not in (None, "host"):
            return False  # a named target (e.g. 'generic' for portable caches): no guess
        features = binding.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


class F32x16(types.Type):
    """A value of 16 float32 lanes."""

    def __init__(self):
        super().__init__(name="f32x16")


f32x16 = F32x16()


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


class I32x16(types.Type):
    """A value of 16 int32 lanes (table indices)."""

    def __init__(self):
        super().__init__(name="i32x16")


i32x16 = I32x16()


@register_model(I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _IVEC)


_FAST = ("fast",)


def _fma(builder, a, b, c):
    fnty = ir.FunctionType(_VEC, [_VEC, _VEC, _VEC])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v16f32")
    return builder.call(fn, [a, b, c])


def _element_pointer(context, builder, arrty, arr, index):
    data = context.make_array(arrty)(context, builder, arr).data
    ptr = builder.gep(data, [index])
    return builder.bitcast(ptr, _F32.as_pointer())


def _check_f32_array(arr):
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.float32):
        raise TypeError("a 1-D float32 array is needed")


@intrinsic
def vload(typingctx, arr, index):
    """The 16 elements ``arr[index:index + 16]``."""
    _check_f32_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=4)

    return f32x16(arr, types.intp), codegen


@intrinsic
def vstore(typingctx, arr, index, value):
    """``arr[index:index + 16] = value``."""
    _check_f32_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, _VEC.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, types.intp, f32x16), codegen


def _splat(builder, scalar, vecty):
    v = builder.insert_element(ir.Constant(vecty, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vecty, ir.Undefined),
                                  ir.Constant(_IVEC, [0] * LANES))


@intrinsic
def vsplat(typingctx, x):
    """16 copies of the float32 ``x``."""

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], _VEC)

    return f32x16(types.float32), codegen


@intrinsic
def vzero(typingctx):
    """16 zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, [0.0] * LANES)

    return f32x16(), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane by lane (fused)."""

    def codegen(context, builder, sig, args):
        return _fma(builder, args[0], args[1], args[2])

    return f32x16(f32x16, f32x16, f32x16), codegen


def _binary(op):
    @intrinsic
    def impl(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1], flags=_FAST)

        return f32x16(f32x16, f32x16), codegen

    return impl


vadd = _binary("fadd")
vsub = _binary("fsub")
vmul = _binary("fmul")


@intrinsic
def vclip(typingctx, x, lo, hi):
    """``min(max(x, lo), hi)`` lane by lane (``lo``, ``hi`` vectors)."""

    def codegen(context, builder, sig, args):
        x, lo, hi = args
        x = builder.select(builder.fcmp_ordered(">", x, lo), x, lo)
        return builder.select(builder.fcmp_ordered("<", x, hi), x, hi)

    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vtrunc(typingctx, x):
    """The lanes of ``x`` (non-negative) truncated to int32."""

    def codegen(context, builder, sig, args):
        return builder.fptosi(args[0], _IVEC)

    return i32x16(f32x16), codegen


@intrinsic
def vfloat(typingctx, i):
    """The int32 lanes of ``i`` as float32."""

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _VEC)

    return f32x16(i32x16), codegen


def _gather_pairs(builder, base, idx):
    """The 8-byte entries ``base[idx]`` (``base`` an i64 pointer, ``idx`` 8 int32 lanes): one
    ``llvm.masked.gather`` of 8 lanes (one 32-bit-index qword gather on x86)."""
    i64 = ir.IntType(64)
    lanes = builder.sext(idx, ir.VectorType(i64, 8))
    # llvmlite types a getelementptr by its indices' element types; a vector index is set after
    gep = ir.instructions.GEPInstr(builder.block, base, [ir.Constant(i64, 0)], inbounds=True, name="")
    gep.indices = [lanes]
    gep.operands = [base, lanes]
    gep.type = ir.VectorType(base.type, 8)
    builder._insert(gep)
    vec = ir.VectorType(i64, 8)
    fnty = ir.FunctionType(vec, [gep.type, _I32, ir.VectorType(ir.IntType(1), 8), vec])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.gather.v8i64.v8p0")
    mask = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 8)
    return builder.call(fn, [gep, ir.Constant(_I32, 8), mask, ir.Constant(vec, ir.Undefined)])


@intrinsic
def vlinear_table(typingctx, pairs, idx, frac):
    """``value + frac * step`` of the linear table ``pairs`` (complex64: value + 1j * step per
    interval) at the intervals ``idx``: two gathers of 8 (value, step) pairs, de-interleaved."""
    if not (isinstance(pairs, types.Array) and pairs.ndim == 1 and pairs.dtype == types.complex64):
        raise TypeError("a 1-D complex64 table is needed")

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        entries = builder.bitcast(data, ir.IntType(64).as_pointer())
        undef = ir.Constant(_IVEC, ir.Undefined)
        halves = [builder.shuffle_vector(args[1], undef,
                                         ir.Constant(ir.VectorType(_I32, 8), list(range(h, h + 8))))
                  for h in (0, 8)]
        lo, hi = (builder.bitcast(_gather_pairs(builder, entries, h), _VEC) for h in halves)
        value = builder.shuffle_vector(lo, hi, ir.Constant(_IVEC, list(range(0, 32, 2))))
        step = builder.shuffle_vector(lo, hi, ir.Constant(_IVEC, list(range(1, 32, 2))))
        return _fma(builder, args[2], step, value)

    return f32x16(pairs, i32x16, f32x16), codegen


@intrinsic
def vpoly32(typingctx, coef, seg, t):
    """Piecewise polynomials of 32 segments (:class:`.influence.PolyTable`, one filter's row
    ``coef``: the coefficients of ``t**k`` of the 32 segments at ``coef[32 k:32 k + 32]``) at
    the segments ``seg`` (int32 lanes, 0..31) and local coordinates ``t``, by Horner's rule;
    each coefficient is picked from two registers by one AVX-512 two-register permute
    (``vpermt2ps``). Needs AVX-512 (the kernels use it only there)."""
    _check_f32_array(coef)
    if POLY_SEGMENTS != 2 * LANES:
        raise TypeError("vpoly32 needs 32 segments")

    def codegen(context, builder, sig, args):
        coef, seg, t = args
        fnty = ir.FunctionType(_VEC, [_VEC, _IVEC, _VEC])
        permute = cgutils.get_or_insert_function(builder.module, fnty,
                                                 "llvm.x86.avx512.vpermi2var.ps.512")

        def coefficient(k):
            lo = builder.load(builder.bitcast(
                _element_pointer(context, builder, sig.args[0], coef,
                                 ir.Constant(ir.IntType(64), 32 * k)), _VEC.as_pointer()), align=4)
            hi = builder.load(builder.bitcast(
                _element_pointer(context, builder, sig.args[0], coef,
                                 ir.Constant(ir.IntType(64), 32 * k + 16)), _VEC.as_pointer()), align=4)
            return builder.call(permute, [lo, seg, hi])

        p = coefficient(POLY_DEGREE)
        for k in range(POLY_DEGREE - 1, -1, -1):
            p = _fma(builder, p, t, coefficient(k))
        return p

    return f32x16(coef, i32x16, f32x16), codegen


@intrinsic(prefer_literal=True)
def vshift(typingctx, a, b, lanes):
    """Lanes ``lanes .. lanes + 15`` of the 32 lanes ``a, b`` (``lanes`` a literal 0..16): the
    vector ``lanes`` elements on from ``a``'s first, as an unaligned load would give it, built
    from two loaded vectors (one ``valignd`` on AVX-512)."""
    if not isinstance(lanes, types.IntegerLiteral):
        raise TypeError("vshift needs a literal lane count")
    n = lanes.literal_value

    def codegen(context, builder, sig, args):
        a, b = args[:2]
        if n in (0, LANES):
            return a if n == 0 else b
        if has_avx512():
            # LLVM lowers this shuffle of floats to a two-register permute (vpermt2ps), which
            # overwrites one source: register copies and spills in the blocks (measured: 298
            # spill loads and stores in the 7x7 kernel). valignd keeps both sources.
            binding.initialize_native_asmparser()  # inline assembly needs it; Numba leaves it out
            fnty = ir.FunctionType(_VEC, [_VEC, _VEC])
            asm = ir.InlineAsm(fnty, f"valignd $${n}, $1, $2, $0", "=v,v,v")
            return builder.call(asm, [a, b])
        return builder.shuffle_vector(a, b, ir.Constant(_IVEC, list(range(n, n + LANES))))

    return f32x16(f32x16, f32x16, lanes), codegen
