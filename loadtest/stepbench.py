"""Model-step micro-benchmark: wall time of one runner step by batch size, threads and quantisation.

    python -m loadtest.stepbench [--out bench-results/steps.json]

Runs the real ModelRunner (features, encoder step, greedy decoding) on random audio; prints a table and
writes JSON. Use it to see the fixed and per-stream cost of a step on the machine at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from gateway.models import load_model
from gateway.runner import ChunkInput, ModelRunner
from gateway.scheduler import ItemKind, NewStream, StepPlan, WorkItem
from gateway.session import StreamSettings


def _items(n: int, first: bool, rng: np.random.Generator) -> StepPlan:
    items = tuple(WorkItem(i, ItemKind.AUDIO, 0.0,
                           ChunkInput(window=(rng.standard_normal(1400) * 0.1).astype(np.float32), num_frames=16,
                                      audio_end_s=0.0))
                  for i in range(n))
    return StepPlan(step_id=0, items=items, slots=tuple(range(n)), planned_s=0.0,
                    new_streams=tuple(NewStream(i, StreamSettings()) for i in range(n)) if first else ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--batches", default="1,4,8,16,32,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--quantize", default="none,int8")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default="bench-results/steps.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'quantize':8} {'threads':>7} {'batch':>5} {'step ms':>8} {'x real time':>11}")
    for quantize in args.quantize.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            runner = ModelRunner(load_model(args.model, "cpu", warn=False), max_streams=64, quantize=quantize)
            for batch in (int(b) for b in args.batches.split(",")):
                runner.run_step(_items(batch, True, rng))
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    runner.run_step(_items(batch, False, rng))
                step_s = (time.perf_counter() - t0) / args.repeats
                rt = batch * runner.config.chunk_ms / 1000 / step_s
                rows.append({"quantize": quantize, "threads": threads, "batch": batch, "step_ms": step_s * 1000,
                             "x_real_time": rt})
                print(f"{quantize:8} {threads:7d} {batch:5d} {step_s * 1000:8.1f} {rt:11.1f}", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                               "torch": torch.__version__}, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
