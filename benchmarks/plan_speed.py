"""Planner speed: `plan --model 7b --gpu t4` as a cold process, and 10,000 plans via the API.

Targets (issue: the analytic planner): under 0.3 s for the cold process, under 1 s for
10,000 plans. Prints the figures; it is a benchmark, not a timed test.

    python benchmarks/plan_speed.py
"""
from __future__ import annotations

import itertools
import shutil
import statistics
import subprocess
import sys
import time


def cold_process(repeats: int = 7) -> list[float]:
    exe = shutil.which("plan")
    cmd = [exe] if exe else [sys.executable, "-m", "planner.cli.command"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd + ["--model", "7b", "--gpu", "t4"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def api_plans(n: int = 10_000) -> tuple[int, float]:
    from planner import TrainSpec, get_gpu, get_model, plan

    models = [get_model(m) for m in ("qwen2.5-0.5b", "llama-3.2-1b", "7b", "llama-3.1-8b", "13b")]
    gpus = [get_gpu(g) for g in ("t4", "l4", "rtx4090", "a100-80gb", "h100")]
    methods = ("full", "lora", "qlora", "dora", "qdora")
    grid = itertools.cycle(itertools.product(models, gpus, methods, (1, 2, 4, 8), (256, 512, 1024, 2048)))
    cases = [(m, g, TrainSpec(method=meth, batch_size=b, seq_len=s)) for m, g, meth, b, s in itertools.islice(grid, n)]
    start = time.perf_counter()
    for model, gpu, train in cases:
        plan(model, gpu, train)
    return n, time.perf_counter() - start


def distinct_plans(n: int = 10_000) -> tuple[int, float]:
    """``n`` plans that share no step: every (model, method, batch, sequence) once, on one GPU,
    so no cached step is reused (the grid above repeats each step on several GPUs, as
    ``--gpu all`` does, and the planner computes a step once per dtype)."""
    from planner import TrainSpec, get_gpu, get_model, plan

    models = [get_model(m) for m in ("qwen2.5-0.5b", "llama-3.2-1b", "7b", "llama-3.1-8b", "13b")]
    gpu = get_gpu("a100-80gb")
    methods = ("full", "lora", "qlora", "dora", "qdora")
    grid = itertools.product(models, methods, range(1, 21), range(256, 256 + 20 * 64, 64))
    cases = [(m, TrainSpec(method=meth, batch_size=b, seq_len=s)) for m, meth, b, s in itertools.islice(grid, n)]
    start = time.perf_counter()
    for model, train in cases:
        plan(model, gpu, train)
    return len(cases), time.perf_counter() - start


def main() -> None:
    times = cold_process()
    print(f"plan --model 7b --gpu t4 (cold process, {len(times)} runs): "
          f"median {statistics.median(times):.3f} s, min {min(times):.3f} s  [target < 0.3 s]")
    n, seconds = api_plans()
    print(f"{n} plans through the Python API: {seconds:.3f} s ({n / seconds:,.0f} plans/s)  [target < 1 s]")
    n, seconds = distinct_plans()
    print(f"{n} plans that share no step: {seconds:.3f} s ({n / seconds:,.0f} plans/s)")


if __name__ == "__main__":
    main()
