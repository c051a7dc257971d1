"""Compile the kernel for a CUDA architecture without a GPU (Triton's ahead-of-time path, down to a cubin).

    python -m triton_kernels.rel_attention.aot_check [--arch 90] [--quick]

The interpreter checks the kernel's arithmetic on the CPU but not that it lowers: a construct the GPU
compiler rejects (a non-constexpr global, a layout ``tl.gather`` cannot handle) only shows up when compiling
for a real target. Triton compiles for any NVIDIA architecture with its bundled ptxas, no device needed, so
this runs every launch variant the launcher can produce (dtypes, look-ahead or not, both position-term
variants, every autotune configuration, query-block heights) through the full pipeline.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from triton_kernels.rel_attention import kernel

_POINTERS = ("Q", "K_RING", "V_RING", "K_RIGHT", "V_RIGHT", "POS", "BIAS_U", "BIAS_V", "OUT")
_INDICES = ("SLOTS", "FRAMES", "LENGTHS")
_PARTIALS = ("PART_ACC", "PART_M", "PART_L")
_CONSTEXPRS = ("HEAD_DIM", "BLOCK_M", "BLOCK_E", "HAS_RIGHT", "POS_GATHER", "SPLIT", "FP32", "BLOCK_N", "BLOCK_P",
               "BLOCK_S")
_UNIT_STRIDES = ("stride_qe", "stride_ke", "stride_ve", "stride_rke", "stride_rve", "stride_pe", "stride_ue",
                 "stride_bve", "stride_oe")


@dataclass(frozen=True, slots=True)
class Variant:
    dtype: str  # "fp16" | "bf16" | "fp32"
    has_right: bool
    pos_gather: bool
    block_m: int
    block_n: int
    num_stages: int
    block_e: int = 64
    split: bool = False

    def label(self) -> str:
        return (f"{self.dtype} right={int(self.has_right)} gather={int(self.pos_gather)} BM={self.block_m} "
                f"BN={self.block_n} stages={self.num_stages} E={self.block_e} split={int(self.split)}")


def variants(quick: bool) -> list[Variant]:
    """Every launch the launcher can make for E = 64 (``quick``: one per code path)."""
    if quick:
        return [Variant("fp16", True, True, 16, 64, 2), Variant("fp16", False, True, 16, 64, 2, split=True)]
    out = []
    configs = [(c.kwargs["BLOCK_N"], c.num_stages) for c in kernel.AUTOTUNE_CONFIGS]
    configs.append((kernel.DEFAULT_CONFIG["BLOCK_N"], kernel.DEFAULT_CONFIG["num_stages"]))
    for dtype, right, (bn, stages) in itertools.product(("fp16", "bf16", "fp32"), (False, True), sorted(set(configs))):
        out.append(Variant(dtype, right, True, 16, bn, stages))
    out += [Variant("fp16", True, False, 16, 64, 2), Variant("bf16", False, False, 16, 64, 2),
            Variant("fp16", False, True, 64, 64, 2), Variant("fp16", True, True, 32, 32, 2),
            Variant("fp16", True, True, 16, 64, 2, block_e=128), Variant("fp16", True, True, 16, 64, 2, block_e=16)]
    out += [Variant(dtype, False, True, 16, bn, stages, split=True)
            for dtype in ("fp16", "bf16") for bn, stages in sorted(set(configs))]
    return out


# Largest dynamic shared memory per block (bytes): a variant above it cannot launch there (the autotuner
# skips such a configuration; the untuned default must fit).
MAX_SHARED = {90: 232448, 89: 101376, 86: 101376, 80: 166912}


def compile_variant(v: Variant, arch: int) -> tuple[int, int]:
    """Compile one variant to a cubin for ``sm_<arch>``; returns the cubin's size and the shared memory
    it needs, in bytes.

    Raises:
        triton.compiler.errors.CompilationError (or the backend's error) when the kernel does not lower.
    """
    fn = kernel.rel_attention_fwd.fn  # under the heuristics wrapper
    sig: dict[str, str] = {}
    # What a launch on contiguous tensors specialises, as the JIT would: unit strides become the constant 1,
    # pointers and the other strides are known multiples of 16 (E = 64), the geometry stays generic.
    divisible: list[str] = []
    for name in fn.arg_names:
        if name in _POINTERS:
            sig[name] = f"*{v.dtype}"
            divisible.append(name)
        elif name in _PARTIALS:
            sig[name] = "*fp32"
            divisible.append(name)
        elif name in _INDICES:
            sig[name] = "*i64"
            divisible.append(name)
        elif name in _CONSTEXPRS or name in _UNIT_STRIDES:
            sig[name] = "constexpr"
        elif name == "qk_scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name.startswith("stride_"):
                divisible.append(name)
    constexprs: dict[str, object] = dict(
        HEAD_DIM=v.block_e, BLOCK_M=v.block_m, BLOCK_E=v.block_e, HAS_RIGHT=v.has_right, POS_GATHER=v.pos_gather,
        SPLIT=v.split, FP32=v.dtype == "fp32", BLOCK_N=v.block_n,
        BLOCK_P=triton.next_power_of_2(v.block_m + v.block_n - 1))
    constexprs.update({name: 1 for name in _UNIT_STRIDES})
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=dict(num_warps=4, num_stages=v.num_stages))
    size, shared = len(compiled.asm["cubin"]), int(compiled.metadata.shared)
    if v.split:  # and the pass that merges the shares
        combine = kernel.rel_attention_combine
        csig = {name: ("*fp32" if name in _PARTIALS else f"*{v.dtype}" if name == "OUT" else
                       "constexpr" if name in _CONSTEXPRS or name == "stride_oe" else "i32")
                for name in combine.arg_names}
        cconst: dict[str, object] = dict(HEAD_DIM=v.block_e, BLOCK_M=v.block_m, BLOCK_E=v.block_e, BLOCK_S=64,
                                         stride_oe=1)
        triton.compile(ASTSource(fn=combine, signature=csig, constexprs=cconst),
                       target=GPUTarget("cuda", arch, 32), options=dict(num_warps=4))
    return size, shared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", help="sm_XX, repeatable (default 90 and 80)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    failed = 0
    for arch in args.arch or [90, 80]:
        for v in variants(args.quick):
            t0 = time.monotonic()
            try:
                size, shared = compile_variant(v, arch)
            except Exception as exc:
                failed += 1
                print(f"sm_{arch} {v.label()}: FAILED {type(exc).__name__}: {str(exc)[-400:]}", flush=True)
                continue
            limit = MAX_SHARED.get(arch)
            default = (v.block_n, v.num_stages) == (kernel.DEFAULT_CONFIG["BLOCK_N"], kernel.DEFAULT_CONFIG["num_stages"])
            fits = limit is None or shared <= limit
            if not fits and default:
                failed += 1
            note = "" if fits else (" TOO MUCH SHARED MEMORY for the default launch" if default else
                                    " (over this GPU's shared memory: the autotuner skips it)")
            print(f"sm_{arch} {v.label()}: ok ({size} B cubin, {shared} B shared, {time.monotonic() - t0:.1f} s)"
                  f"{note}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
