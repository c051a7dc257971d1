"""GPU checks of the fused relative-attention kernel (marked ``gpu``; skipped without CUDA).

The CPU grid of tests/test_rel_attention.py at real sizes and in bf16 too, the tuned launch, the fallback
variant, CUDA-graph capture with positions changing between replays, and an end-to-end check that the
bundled model gives the same transcripts on the GPU (kernel) as on the CPU (the model's own attention).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

if not torch.cuda.is_available():  # everything here skips, but a later module may run the kernel on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
pytest.importorskip("triton")

from triton_kernels.rel_attention import rel_attention, rel_attention_reference  # noqa: E402
from triton_kernels.rel_attention.cases import Shape, make_inputs, ragged  # noqa: E402
from triton_kernels.rel_attention.launcher import rel_attention_triton  # noqa: E402

# Against the fp32 reference on the same rounded inputs; bf16 keeps 8 bits of mantissa.
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=5e-3, rtol=5e-3),
       torch.bfloat16: dict(atol=4e-2, rtol=4e-2)}
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float32, id="fp32")]


def _f32(kw: dict) -> dict:
    return {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}


def check(shape: Shape, dtype: torch.dtype, *, ragged_batch: bool = True, **options: object) -> None:
    frames, lengths = (ragged(shape.batch, mem=shape.mem, chunk=shape.chunk, right=shape.right, seed=shape.batch)
                       if ragged_batch else (None, None))
    q, k_ring, v_ring, kw = make_inputs(shape, dtype=dtype, device="cuda", frames=frames, lengths=lengths)
    out = rel_attention_triton(q, k_ring, v_ring, **kw, **options)  # type: ignore[arg-type]
    expected = rel_attention_reference(q.float(), k_ring.float(), v_ring.float(), **_f32(kw))
    torch.testing.assert_close(out.float(), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mem", [0, 64, 256, 800])
@pytest.mark.parametrize("chunk,right", [(1, 0), (4, 0), (8, 0), (16, 0), (8, 2)])
@pytest.mark.parametrize("batch", [1, 64])
def test_real_sizes(batch: int, chunk: int, right: int, mem: int, dtype: torch.dtype) -> None:
    check(Shape(batch, 6, chunk, mem, 64, right=right), dtype, autotune=False)


@pytest.mark.parametrize("head_dim,heads", [(32, 8), (64, 4), (80, 2), (128, 2)])
def test_head_sizes(head_dim: int, heads: int) -> None:
    check(Shape(8, heads, 8, 96, head_dim, right=1), torch.float16, autotune=False)


@pytest.mark.parametrize("dtype", DTYPES[:2])
def test_largest_benchmark_shape(dtype: torch.dtype) -> None:
    check(Shape(256, 8, 16, 3800), dtype, ragged_batch=False, autotune=False)


@pytest.mark.parametrize("dtype", DTYPES[:2])
@pytest.mark.parametrize("chunk,mem", [(1, 3800), (8, 800), (4, 256)])
def test_small_batch_long_memory_splits_keys(chunk: int, mem: int, dtype: torch.dtype) -> None:
    """One stream over a long memory fills a fraction of the SMs: the launcher splits the keys."""
    from triton_kernels.rel_attention.launcher import choose_splits

    assert choose_splits(6, mem + chunk, torch.device("cuda")) > 1
    check(Shape(1, 6, chunk, mem), dtype, ragged_batch=False, autotune=False)  # auto splits
    check(Shape(2, 6, chunk, mem, right=1), dtype, autotune=False, splits=5)


def test_tuned_launch() -> None:
    check(Shape(64, 6, 8, 256), torch.float16, autotune=True)


def test_row_loop_variant() -> None:
    check(Shape(16, 6, 8, 256, right=2), torch.float16, autotune=False, pos_gather=False)


def test_auto_dispatch_uses_the_kernel_on_cuda() -> None:
    shape = Shape(4, 6, 8, 64)
    q, k_ring, v_ring, kw = make_inputs(shape, dtype=torch.float16, device="cuda")
    got = rel_attention(q, k_ring, v_ring, **kw)
    assert got.transpose(1, 2).is_contiguous()  # the kernel's output layout, not SDPA's
    torch.testing.assert_close(got, rel_attention(q, k_ring, v_ring, **kw, backend="reference"),
                               **TOL[torch.float16])


@pytest.mark.parametrize("shape", [Shape(16, 6, 8, 128, right=2), Shape(1, 6, 4, 800)], ids=["batch", "split"])
def test_cuda_graph_replay_follows_positions(shape: Shape) -> None:
    """Captured once, replayed with new slots, positions and lengths written into the same tensors."""
    q, k_ring, v_ring, kw = make_inputs(shape, dtype=torch.float16, device="cuda")
    rel_attention_triton(q, k_ring, v_ring, **kw)  # compile and autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = rel_attention_triton(q, k_ring, v_ring, **kw)
    for seed in range(3):
        frames, lengths = ragged(shape.batch, mem=shape.mem, chunk=shape.chunk, right=shape.right, seed=seed)
        kw["frames"].copy_(torch.tensor(frames))
        kw["lengths"].copy_(torch.tensor(lengths))
        kw["slots"].copy_(torch.randperm(shape.batch + 3)[: shape.batch])
        q.normal_()
        graph.replay()
        expected = rel_attention_reference(q.float(), k_ring.float(), v_ring.float(), **_f32(kw))
        torch.testing.assert_close(out.float(), expected, **TOL[torch.float16])


def _utterances(loaded) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Features of a few utterances: synthetic speech when espeak-ng is installed, else varied tones/noise."""
    import numpy as np

    from streaming_model.features import compute_fbank

    signals: list[np.ndarray] = []
    if shutil.which("espeak-ng"):
        try:
            from streaming_model.data.voices import VoiceSpec, synthesize

            voice = VoiceSpec("espeak", "en-us", rate=160, pitch=50, word_gap=0, alpha=1.0, eq=())
            for i, text in enumerate(["can you hear me", "i want to pay my bill", "thank you for calling"]):
                signals.append(np.clip(synthesize(text, voice, seed=i), -1, 1).astype(np.float32))
        except Exception:  # a synthesis dependency missing on this machine: fall back to signals below
            signals = []
    if not signals:
        rng = np.random.default_rng(0)
        t = np.arange(8000 * 3) / 8000
        for f in (300.0, 700.0, 1500.0):
            signals.append((0.3 * np.sin(2 * np.pi * f * t * (1 + t)) + 0.05 * rng.standard_normal(t.size))
                           .astype(np.float32))
    return [compute_fbank(s, loaded.features) for s in signals]


def test_bundled_model_same_transcripts_on_gpu_and_cpu() -> None:
    try:
        from streaming_model.checkpoint import bundled_checkpoint_path, load_checkpoint
    except ImportError as exc:  # the GPU machine may lack the checkpoint's dependencies (safetensors, numpy)
        pytest.skip(f"checkpoint loading needs {exc.name}")

    path = bundled_checkpoint_path()
    if path is None:
        pytest.skip("no bundled checkpoint in this tree")
    cpu = load_checkpoint(path, device="cpu")
    gpu = load_checkpoint(path, device="cuda")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the convolutions in full fp32, as on the CPU
    try:
        _compare_transcripts(cpu, gpu)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _compare_transcripts(cpu, gpu) -> None:  # type: ignore[no-untyped-def]
    from tests.rel_attention_helpers import step_attention, stream_transcript

    for feats in _utterances(cpu):
        text_cpu, logits_cpu = stream_transcript(cpu, feats, "cpu")
        with step_attention("triton"):
            text_gpu, logits_gpu = stream_transcript(gpu, feats, "cuda")
        assert text_gpu == text_cpu
        torch.testing.assert_close(logits_gpu, logits_cpu, atol=2e-3, rtol=2e-3)
