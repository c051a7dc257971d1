"""The fused relative-attention kernel equals its PyTorch reference.

Without CUDA the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1, set here before the kernel
module is imported; process-wide, which only this package's kernels read), on tiny shapes: the interpreter
runs program instances one by one. With CUDA the same grid runs on the GPU (tests/test_rel_attention_gpu.py
adds real sizes and bf16).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from triton_kernels.rel_attention import rel_attention, rel_attention_reference, resolve_backend
from triton_kernels.rel_attention.cases import Shape, make_inputs, ragged
from triton_kernels.rel_attention.launcher import rel_attention_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: the kernel's IEEE dots against the reference's, differing in summation order only. fp16: the kernel
# (fp16 operands, fp32 accumulation) against the reference in fp32 on the same fp16-rounded inputs.
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=4e-3, rtol=4e-3),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


def check(shape: Shape, dtype: torch.dtype, *, frames: list[int] | None = None,
          lengths: list[int] | None = None, seed: int = 0, **kernel_options: object) -> None:
    q, k_ring, v_ring, kw = make_inputs(shape, dtype=dtype, device=DEVICE, frames=frames, lengths=lengths,
                                        seed=seed)
    out = rel_attention_triton(q, k_ring, v_ring, **kw, **kernel_options)  # type: ignore[arg-type]

    def f32(x: object) -> object:
        return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    expected = rel_attention_reference(q.float(), k_ring.float(), v_ring.float(),
                                       **{k: f32(v) for k, v in kw.items()})
    assert out.shape == (shape.batch, shape.heads, shape.queries, shape.head_dim)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, **TOL[dtype])


# (B, H, L, R, M, E): every case mixes empty, partial, full and wrapped memories and short windows.
GRID = [
    pytest.param(Shape(5, 2, 3, 5, 16, right=2), id="tiny-lookahead"),
    pytest.param(Shape(3, 1, 1, 7, 16), id="Lq1"),
    pytest.param(Shape(2, 2, 4, 0, 16), id="no-memory-slot"),
    pytest.param(Shape(3, 2, 5, 70, 32), id="keys-not-block-multiple"),
    pytest.param(Shape(2, 1, 20, 9, 16, right=1), id="Lq21-one-query-block"),
    pytest.param(Shape(1, 1, 70, 3, 16), id="two-query-blocks"),
    pytest.param(Shape(2, 2, 4, 6, 24, right=1), id="head-dim-not-pow2"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", GRID)
def test_kernel_matches_reference_ragged(shape: Shape, dtype: torch.dtype) -> None:
    frames, lengths = ragged(shape.batch, mem=shape.mem, chunk=shape.chunk, right=shape.right)
    check(shape, dtype, frames=frames, lengths=lengths)


@pytest.mark.parametrize("shape", [GRID[0], GRID[3]])
def test_row_loop_variant_matches_reference(shape: pytest.param) -> None:  # type: ignore[valid-type]
    """The fallback position-term variant (no tl.gather) computes the same thing."""
    frames, lengths = ragged(shape.batch, mem=shape.mem, chunk=shape.chunk, right=shape.right, seed=1)
    check(shape, torch.float32, frames=frames, lengths=lengths, pos_gather=False)


@pytest.mark.parametrize("splits", [2, 3])
@pytest.mark.parametrize("shape", [GRID[0], GRID[3], pytest.param(Shape(3, 1, 4, 200, 16, right=1), id="4-key-blocks")])
def test_split_keys_match_reference(shape: Shape, splits: int) -> None:
    """Split-key shares (some empty: fewer key blocks than shares, young streams) merge to the same result."""
    frames, lengths = ragged(shape.batch, mem=shape.mem, chunk=shape.chunk, right=shape.right, seed=2)
    check(shape, torch.float32, frames=frames, lengths=lengths, splits=splits)


def test_empty_memory_every_stream() -> None:
    """Fresh streams (frames = 0): only the chunk's own keys are real, even though the ring holds data."""
    shape = Shape(3, 2, 4, 12, 16)
    check(shape, torch.float32, frames=[0, 0, 0], lengths=[4, 1, 3])


def test_full_memory_every_rotation() -> None:
    """Old streams at every ring rotation W = M + L."""
    shape = Shape(7, 1, 2, 5, 16, slab_rows=7)
    check(shape, torch.float32, frames=[100 + i for i in range(7)])


def test_slot_order_is_respected() -> None:
    """Stream b reads slab row slots[b] and nothing else: permuting the batch permutes the outputs."""
    shape = Shape(4, 2, 2, 6, 16)
    q, k_ring, v_ring, kw = make_inputs(shape, device=DEVICE, frames=[0, 3, 8, 30])
    out = rel_attention_triton(q, k_ring, v_ring, **kw)
    perm = torch.tensor([2, 0, 3, 1], device=DEVICE)
    kw_p = {k: (v[perm] if k in ("slots", "frames", "lengths", "k_right", "v_right") and v is not None else v)
            for k, v in kw.items()}
    out_p = rel_attention_triton(q[perm], k_ring, v_ring, **kw_p)
    torch.testing.assert_close(out_p, out[perm])


def test_output_layout_makes_projection_reshape_free() -> None:
    shape = Shape(2, 3, 4, 5, 16)
    q, k_ring, v_ring, kw = make_inputs(shape, device=DEVICE)
    out = rel_attention_triton(q, k_ring, v_ring, **kw)
    assert out.transpose(1, 2).is_contiguous()


def test_dispatch_and_force_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = Shape(2, 2, 3, 4, 16)
    q, k_ring, v_ring, kw = make_inputs(shape, device=DEVICE)
    assert resolve_backend(q) == ("triton" if q.is_cuda else "reference")  # CPU tensors: the reference
    assert resolve_backend(q, "triton") == "triton"
    monkeypatch.setenv("XLGATE_REL_ATTENTION", "triton")
    assert resolve_backend(q) == "triton"
    forced = rel_attention(q, k_ring, v_ring, **kw)
    monkeypatch.setenv("XLGATE_REL_ATTENTION", "reference")
    torch.testing.assert_close(forced, rel_attention(q, k_ring, v_ring, **kw), **TOL[torch.float32])
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend(q, "cuda")
    assert resolve_backend(q, "auto", needs_grad=True) == "reference"


def test_gradients_take_the_reference() -> None:
    shape = Shape(1, 1, 2, 3, 16)
    q, k_ring, v_ring, kw = make_inputs(shape, device=DEVICE)
    q.requires_grad_(True)
    out = rel_attention(q, k_ring, v_ring, **kw, backend="auto")
    out.sum().backward()
    assert q.grad is not None


@pytest.mark.parametrize("bad,match", [
    (dict(pos_keys=torch.zeros(2, 5, 16)), "pos_keys must be"),
    (dict(bias_u=torch.zeros(3, 16)), "bias_u must be"),
    (dict(slots=torch.zeros(3, dtype=torch.int64)), "slots must be"),
    (dict(frames=torch.zeros(2)), "frames must be int32 or int64"),
    (dict(k_right=torch.zeros(2, 2, 1, 16)), "given together"),
])
def test_input_validation_names_expected_and_actual(bad: dict, match: str) -> None:
    q, k_ring, v_ring, kw = make_inputs(Shape(2, 2, 3, 4, 16))
    with pytest.raises(ValueError, match=match):
        rel_attention_reference(q, k_ring, v_ring, **{**kw, **bad})
    with pytest.raises(ValueError, match=match):
        rel_attention_triton(q, k_ring, v_ring, **{**kw, **bad})
