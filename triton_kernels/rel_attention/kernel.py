"""Fused Transformer-XL relative-position attention over a ring-buffer memory (forward, Triton).

Theory of operation
-------------------
One program computes ``BLOCK_M`` queries of one (stream, head) pair, as the Triton tutorial's fused
attention does, and walks the stream's keys in blocks of ``BLOCK_N`` with an online (base-2) softmax.

Keys are addressed *logically*: ``c = 0 .. M-1`` is the memory (oldest first), ``c = M .. W-1`` the chunk's
own frames (``W = M + L`` is the ring), ``c = W .. W+R-1`` the look-ahead copies. Logical key ``c < W`` lives
in ring slot ``(ring_start + c) mod W`` of the stream's row of the slab (``ring_start = (frames + L) mod W``,
the slot of the oldest memory frame; see ``streaming_model.model.ring_geometry``); look-ahead keys come from
their own tensor. The slab row is chosen by the stream's slot index, so no gather copy of state is made.

Key ``c`` is real iff ``M - frames <= c < M + length``: the memory is a suffix of valid frames (a young
stream has fewer than M), and padding after the stream's last real frame is masked. Blocks entirely outside
that range are not visited, so ragged memories cost what they hold.

Query ``i`` sits at coordinate ``M + i``; the pair's distance row in the compact position table ``pos``
(``P = M + 2 Lq - 1`` rows, two-sided distances) is ``i - c + M + Lq - 1``. For a (query block, key block)
tile the rows it needs are a window of ``BLOCK_M + BLOCK_N - 1`` consecutive rows, so the position term is
one small tensor-core product ``(q + v) @ window^T`` followed by a per-row shift (``tl.gather`` with a
constant index, or, where a Triton build cannot lower that gather, a loop over query rows): Transformer-XL's
rel-shift (Dai et al. 2019, appendix B) done by index arithmetic, with no dense bias matrix anywhere.

Split-key (flash-decoding): when a batch has too few (stream, head) pairs to fill the GPU and the memory is
long, a third grid axis splits each stream's key blocks into ``SPLITS`` shares; each program writes its
unnormalised partial sums and running maximum, and ``rel_attention_combine`` merges them.

Scores are ``((q + u) . k + (q + v) . pos[row]) * scale`` accumulated in fp32; inputs may be fp16, bf16 or
fp32 (fp32 dots use IEEE precision, for tests). A query whose keys are all masked gets a zero output.

Dimension legend: B streams, H heads, Lq queries (L chunk + R look-ahead), E head width, S slab rows,
W ring frames, M memory frames, P position rows.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Autotuning space (the launcher uses DEFAULT_CONFIG under the interpreter and when tuning is off). Small on
# purpose: the prepared GPU check has minutes, and these problems are memory-bound, so the key-block width
# and pipelining depth are what matter.
AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=4, num_stages=stages)
    for bn, stages in ((32, 2), (64, 2), (64, 3), (128, 3))
]
DEFAULT_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 2}

_MASKED = tl.constexpr(-1.0e30)  # finite, so a block with every key masked never produces inf - inf


@triton.jit
def _dot(a, b, FP32: tl.constexpr):
    if FP32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


# The geometry changes with every shape: specialising on it (value 1, divisibility by 16) would compile a new
# variant per shape, which the GPU check's minutes cannot afford; it only enters index arithmetic. Strides stay
# specialised: their divisibility is what lets the K/V/position row loads vectorise (and pipeline). The head
# size is a compile-time constant, so the head-dimension mask folds away when E is a power of two.
_GENERIC_ARGS = ["H", "LQ", "MEM", "RING", "RIGHT", "NUM_POS", "SPLITS"]


@triton.heuristics({"BLOCK_P": lambda args: triton.next_power_of_2(args["BLOCK_M"] + args["BLOCK_N"] - 1)})
@triton.jit(do_not_specialize=_GENERIC_ARGS)
def rel_attention_fwd(
    Q, K_RING, V_RING, K_RIGHT, V_RIGHT, POS, BIAS_U, BIAS_V, SLOTS, FRAMES, LENGTHS, OUT,
    PART_ACC, PART_M, PART_L,  # split-key partial results (fp32), read only when SPLIT
    stride_qb, stride_qh, stride_qm, stride_qe,
    stride_ks, stride_kh, stride_kn, stride_ke,
    stride_vs, stride_vh, stride_vn, stride_ve,
    stride_rkb, stride_rkh, stride_rkn, stride_rke,
    stride_rvb, stride_rvh, stride_rvn, stride_rve,
    stride_ph, stride_pp, stride_pe,
    stride_uh, stride_ue,
    stride_bvh, stride_bve,
    stride_ob, stride_oh, stride_om, stride_oe,
    H, LQ, MEM, RING, RIGHT, NUM_POS, SPLITS,
    qk_scale,  # 1/sqrt(E) * log2(e): scores go straight to base 2
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, HAS_RIGHT: tl.constexpr,
    POS_GATHER: tl.constexpr, SPLIT: tl.constexpr,
    FP32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)  # which share of the key blocks (split-key, when SPLIT)
    b = pid_bh // H
    h = pid_bh % H
    dtype = Q.dtype.element_ty

    slot = tl.load(SLOTS + b).to(tl.int64)
    frames = tl.load(FRAMES + b).to(tl.int64)
    length = tl.load(LENGTHS + b).to(tl.int32)
    ring_start = ((frames + (RING - MEM)) % RING).to(tl.int32)  # slot of the oldest memory frame
    mem_lo = MEM - tl.minimum(frames, MEM).to(tl.int32)  # first real logical key
    key_hi = tl.minimum(MEM + length, RING + RIGHT)  # one past the last real logical key

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.arange(0, BLOCK_E)
    e_ok = offs_e < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_e[None, :] * stride_qe,
                mask=(offs_m < LQ)[:, None] & e_ok[None, :], other=0.0).to(tl.float32)
    u = tl.load(BIAS_U + h * stride_uh + offs_e * stride_ue, mask=e_ok, other=0.0).to(tl.float32)
    vb = tl.load(BIAS_V + h * stride_bvh + offs_e * stride_bve, mask=e_ok, other=0.0).to(tl.float32)
    q_u = (q + u[None, :]).to(dtype)  # (BLOCK_M, BLOCK_E)
    q_v = (q + vb[None, :]).to(dtype)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)

    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    # Position row of (query i, key c) = i - c + MEM + LQ - 1 = window_base + shift[i, c], where the window of
    # a tile starts at p0 = i0 - c0 - (BLOCK_N - 1) + MEM + LQ - 1 and shift is the same for every tile.
    shift = rows[:, None] - cols[None, :] + (BLOCK_N - 1)  # (BLOCK_M, BLOCK_N), in 0 .. BLOCK_M+BLOCK_N-2
    offs_p = tl.arange(0, BLOCK_P)

    k_ring_base = K_RING + slot * stride_ks + h * stride_kh
    v_ring_base = V_RING + slot * stride_vs + h * stride_vh
    start = (mem_lo // BLOCK_N) * BLOCK_N
    stop = key_hi
    if SPLIT:  # this program walks its share of the stream's key blocks; a combine pass merges the shares
        per_split = ((key_hi - start + BLOCK_N - 1) // BLOCK_N + SPLITS - 1) // SPLITS  # blocks per share
        start = start + pid_s * per_split * BLOCK_N
        stop = tl.minimum(start + per_split * BLOCK_N, key_hi)
    for c0 in range(start, stop, BLOCK_N):
        c = c0 + cols  # logical key indices
        valid = (c >= mem_lo) & (c < key_hi)
        in_ring = valid & (c < RING)
        phys = (ring_start + c) % RING
        kv_mask = in_ring[:, None] & e_ok[None, :]
        k = tl.load(k_ring_base + phys[:, None] * stride_kn + offs_e[None, :] * stride_ke, mask=kv_mask, other=0.0)
        v = tl.load(v_ring_base + phys[:, None] * stride_vn + offs_e[None, :] * stride_ve, mask=kv_mask, other=0.0)
        if HAS_RIGHT:
            in_right = valid & (c >= RING)
            r_mask = in_right[:, None] & e_ok[None, :]
            n_right = c - RING
            k += tl.load(K_RIGHT + b * stride_rkb + h * stride_rkh + n_right[:, None] * stride_rkn
                         + offs_e[None, :] * stride_rke, mask=r_mask, other=0.0)
            v += tl.load(V_RIGHT + b * stride_rvb + h * stride_rvh + n_right[:, None] * stride_rvn
                         + offs_e[None, :] * stride_rve, mask=r_mask, other=0.0)
        k = k.to(dtype)
        v = v.to(dtype)

        scores = _dot(q_u, tl.trans(k), FP32)  # (BLOCK_M, BLOCK_N) content term (a) + (c)

        p0 = pid_m * BLOCK_M - c0 - (BLOCK_N - 1) + MEM + LQ - 1
        if POS_GATHER:
            p = p0 + offs_p
            window = tl.load(POS + h * stride_ph + p[:, None] * stride_pp + offs_e[None, :] * stride_pe,
                             mask=((p >= 0) & (p < NUM_POS))[:, None] & e_ok[None, :], other=0.0).to(dtype)
            table = _dot(q_v, tl.trans(window), FP32)  # (BLOCK_M, BLOCK_P) position term (b) + (d), unshifted
            scores += tl.gather(table, shift, 1)  # the rel-shift: row i reads columns i - c + BLOCK_N - 1
        else:
            q_v32 = q_v.to(tl.float32)
            for i in tl.static_range(BLOCK_M):
                p = p0 + i + (BLOCK_N - 1) - cols  # (BLOCK_N,) rows for query row i
                r = tl.load(POS + h * stride_ph + p[:, None] * stride_pp + offs_e[None, :] * stride_pe,
                            mask=((p >= 0) & (p < NUM_POS))[:, None] & e_ok[None, :], other=0.0).to(dtype)
                qi = tl.sum(tl.where((rows == i)[:, None], q_v32, 0.0), axis=0)  # (BLOCK_E,)
                bd_i = tl.sum(r.to(tl.float32) * qi[None, :], axis=1)  # (BLOCK_N,)
                scores += tl.where((rows == i)[:, None], bd_i[None, :], 0.0)

        scores = tl.where(valid[None, :], scores * qk_scale, _MASKED)
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.math.exp2(m_i - m_new)
        probs = tl.math.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(probs, 1)
        acc = acc * alpha[:, None] + _dot(probs.to(dtype), v, FP32)
        m_i = m_new

    if SPLIT:  # unnormalised partials, rows (stream*head, share, query) of (B*H, SPLITS, Lq[, E]) buffers
        row = (pid_bh.to(tl.int64) * SPLITS + pid_s) * LQ + offs_m
        q_ok = offs_m < LQ
        tl.store(PART_ACC + row[:, None] * HEAD_DIM + offs_e[None, :], acc, mask=q_ok[:, None] & e_ok[None, :])
        tl.store(PART_M + row, m_i, mask=q_ok)
        tl.store(PART_L + row, l_i, mask=q_ok)
    else:
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_i[:, None]
        tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_e[None, :] * stride_oe,
                 out.to(OUT.dtype.element_ty), mask=(offs_m < LQ)[:, None] & e_ok[None, :])


@triton.jit(do_not_specialize=["H", "LQ", "SPLITS"])
def rel_attention_combine(
    PART_ACC, PART_M, PART_L, OUT,
    stride_ob, stride_oh, stride_om, stride_oe,
    H, LQ, SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Merge the split-key partials of one (query block, stream, head): rescale each share's sums to the
    common maximum and normalise (the flash-decoding reduction)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = tl.arange(0, BLOCK_S)
    offs_e = tl.arange(0, BLOCK_E)
    q_ok = offs_m < LQ
    e_ok = offs_e < HEAD_DIM
    rows = (pid_bh.to(tl.int64) * SPLITS + offs_s[None, :]) * LQ + offs_m[:, None]  # (BLOCK_M, BLOCK_S)
    ok = q_ok[:, None] & (offs_s < SPLITS)[None, :]
    m_s = tl.load(PART_M + rows, mask=ok, other=float("-inf"))
    l_s = tl.load(PART_L + rows, mask=ok, other=0.0)
    m_max = tl.max(m_s, 1)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # no share saw a key: every weight is 0
    w = tl.math.exp2(m_s - m_max[:, None])  # (BLOCK_M, BLOCK_S); empty shares (m = -inf) weigh 0
    l_sum = tl.sum(w * l_s, 1)
    l_sum = tl.where(l_sum == 0.0, 1.0, l_sum)
    acc = tl.zeros([BLOCK_M, BLOCK_E], dtype=tl.float32)
    for s in range(0, SPLITS):
        w_s = tl.sum(tl.where((offs_s == s)[None, :], w, 0.0), 1)  # (BLOCK_M,)
        row = (pid_bh.to(tl.int64) * SPLITS + s) * LQ + offs_m
        part = tl.load(PART_ACC + row[:, None] * HEAD_DIM + offs_e[None, :], mask=q_ok[:, None] & e_ok[None, :],
                       other=0.0)
        acc += part * w_s[:, None]
    out = acc / l_sum[:, None]
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_e[None, :] * stride_oe,
             out.to(OUT.dtype.element_ty), mask=q_ok[:, None] & e_ok[None, :])


# The tuned entry point: re-tuned per query count, memory, ring and head geometry (not per batch size).
rel_attention_fwd_tuned = triton.autotune(
    configs=AUTOTUNE_CONFIGS, key=["LQ", "MEM", "RING", "RIGHT", "HEAD_DIM", "SPLITS"])(rel_attention_fwd)
