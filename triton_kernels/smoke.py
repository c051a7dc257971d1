"""A trivial Triton kernel: the GPU check's first launch, so a broken compiler or driver stops it in seconds.

(A module of its own because ``triton_kernels.gpu_check`` imports triton only after checking it exists, and
older Triton releases cannot compile kernels defined inside functions.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _double(x_ptr, y_ptr, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)


def run_smoke_kernel(device: str = "cuda") -> None:
    """Compile and run the kernel once.

    Raises:
        RuntimeError: when it ran but computed wrong values (compiler or launch errors propagate as they are).
    """
    x = torch.arange(1000, device=device, dtype=torch.float32)
    y = torch.empty_like(x)
    _double[(triton.cdiv(1000, 256),)](x, y, 1000, BLOCK=256)
    if x.is_cuda:
        torch.cuda.synchronize()
    if not torch.equal(y, x * 2):
        raise RuntimeError("the smoke kernel computed wrong values")
