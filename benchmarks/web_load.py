"""Load on the web page's API: N requests from C clients on 127.0.0.1, latency and throughput.

Starts `plan-ui` (python -m planner.web) on a free local port, unless --url names a running
one, then sends --requests calls of the `/plan` endpoint from --clients threads, each with its
own gradio_client Client, over a mix of settings (models, GPUs, batch and sequence, several
GPUs, bad input). Prints the latency p50 / p95 / max and the throughput, and, in this process,
the time of the parts a page update adds to a plan (the chart). Figures are printed, not
asserted. Needs the ui extra.

    python benchmarks/web_load.py                      # 200 requests from 8 clients
    python benchmarks/web_load.py --requests 1000 --clients 16
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIX = [
    "model=7b&gpu=t4",
    "model=8b&gpu=rtx4090&method=qlora&method=lora&batch-size={b}",
    "model=qwen2.5-7b&gpu=l4&gpu=a100-80gb&seq-len={s}&gradient-checkpointing=on",
    "model=70b&gpu=rtx4090&num-gpus=2&sharding=fsdp&method=qlora&gradient-checkpointing=on",
    "model=gemma-3-4b&gpu=a10g&rank={r}&lora-dropout=0.05",
    "model=qwen3-30b-a3b&gpu=h100&method=lora&batch-size={b}",
    "batch-size=-{b}",  # bad input: answered with its line
]


def queries(n: int) -> list[str]:
    return [MIX[i % len(MIX)].format(b=1 + i % 8, s=256 * (1 + i % 16), r=8 * (1 + i % 8)) for i in range(n)]


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="plan-ui-load-"))
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(home / "g"),
               PYTHONPATH=str(ROOT))
    log = open(home / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "planner.web", "--port", str(port)], cwd=home, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        log.seek(0)
        if url in log.read():
            return proc, url
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"plan-ui did not start; see {home / 'server.log'}")
        time.sleep(0.2)


def load(url: str, requests: int, clients: int) -> None:
    from gradio_client import Client

    work = queries(requests)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    lines = 0

    def client_loop(k: int) -> None:
        nonlocal lines
        client = Client(url, verbose=False, download_files=False)
        client.predict("model=7b&gpu=t4", api_name="/plan")  # connect and warm up (not counted)
        barrier.wait()
        for q in work[k::clients]:
            t = time.perf_counter()
            try:
                out = client.predict(q, api_name="/plan")
            except Exception as exc:  # a failed request is counted, not fatal
                with lock:
                    errors.append(f"{q}: {exc}")
                continue
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                lines += bool(out["error"])
                if q.startswith("batch-size=-") != bool(out["error"]):
                    errors.append(f"{q}: unexpected answer {out['error']!r}")

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    print(f"{len(ms)} requests ({lines} bad input answered with its line) from {clients} clients in {wall:.2f} s, "
          f"{os.cpu_count()} CPUs")
    print(f"latency ms: p50 {statistics.median(ms):.1f}  p95 {p95:.1f}  max {ms[-1]:.1f}  "
          f"mean {statistics.fmean(ms):.1f}")
    print(f"throughput: {len(ms) / wall:.1f} requests/s")
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:5]))


def page_parts(repeats: int = 20) -> None:
    """In this process: a plan with the page's searches, and the chart a page update adds."""
    from planner.web import app, form

    settings = form.from_query("model=8b&gpu=rtx4090&method=lora&method=qlora&method=qdora")
    app.respond(settings)  # warm the caches
    t = time.perf_counter()
    for _ in range(repeats):
        out = app.respond(settings)
    answer = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    for _ in range(repeats):
        app._figure(out["plans"])
    chart = (time.perf_counter() - t) / repeats
    print(f"in process, 8b on rtx4090, 3 methods with both searches: answer {answer * 1000:.1f} ms, "
          f"chart (PNG) {chart * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running plan-ui (default: start one on a free local port)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    proc = None
    url = args.url
    if url is None:
        t = time.perf_counter()
        proc, url = start_server()
        print(f"plan-ui started in {time.perf_counter() - t:.1f} s at {url}")
    try:
        load(url, args.requests, args.clients)
        page_parts()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
