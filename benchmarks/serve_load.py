"""Load test of ``genmodels serve`` on loopback: N clients x M txt2img requests on a tiny
random-weight model. Prints throughput, p50/p99 latency, the error count (target 0) and the
server's resident memory after warm-up, at the end and at its peak (target: flat).

    PYTHONPATH=src python benchmarks/serve_load.py [--clients 8] [--requests 25] [--steps 4]

The server runs as its own process (``genmodels serve --port 0``), so its memory is measured
alone; the clients are threads using ``requests``, one session each. Every request goes to
127.0.0.1 and the run is bounded by N x M requests and a time limit.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from genmodels.pipelines.build import build_pipeline, save_pipeline


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def start_server(ckpt: Path, outdir: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "genmodels.cli.main", "serve", "--ckpt", str(ckpt), "--port",
           "0", "--device", "cpu", "--dtype", "fp32", "--outdir", str(outdir)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # the startup line, printed once the port is held
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{match.group(1)}/sdapi/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=170.0, help="stop after this many s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tiny.safetensors"
        save_pipeline(build_pipeline(), ckpt)
        proc, url = start_server(ckpt, Path(tmp) / "out")
        try:
            run(args, proc.pid, url)
        finally:
            proc.terminate()
            proc.wait(30)


def run(args: argparse.Namespace, pid: int, url: str) -> None:
    body = dict(prompt="a cat", steps=args.steps, width=args.size, height=args.size,
                sampler_name="Euler a")  # fmt: skip
    for seed in range(3):  # warm-up: first-call allocations are not a leak
        requests.post(f"{url}/txt2img", json=body | {"seed": seed}, timeout=60).raise_for_status()
    rss_start, peak, stop = rss_mib(pid), [rss_mib(pid)], threading.Event()
    deadline = time.monotonic() + args.timeout

    def sample_memory() -> None:
        while not stop.wait(0.2):
            peak.append(rss_mib(pid))

    def client(c: int) -> tuple[list[float], int]:
        latencies, errors = [], 0
        with requests.Session() as session:
            for i in range(args.requests):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    r = session.post(f"{url}/txt2img", json=body | {"seed": c * 1000 + i},
                                     timeout=120)  # fmt: skip
                    ok = r.status_code == 200 and len(r.json()["images"]) == 1
                except (requests.RequestException, ValueError):
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok
        return latencies, errors

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(client, range(args.clients)))
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    latencies = sorted(t for lat, _ in results for t in lat)
    errors = sum(e for _, e in results)
    n = len(latencies)
    pct = lambda q: latencies[min(n - 1, int(q * n))] * 1e3  # noqa: E731
    print(f"{args.clients} clients x {args.requests} requests ({n} sent), txt2img "
          f"{args.size}x{args.size}, {args.steps} steps, tiny model, loopback")  # fmt: skip
    print(f"throughput   {n / wall:.2f} requests/s over {wall:.1f} s")
    print(f"latency      p50 {pct(0.50):.0f} ms   p99 {pct(0.99):.0f} ms   max {pct(1.0):.0f} ms")
    print(f"errors       {errors}")
    print(f"server RSS   start {rss_start:.1f} MiB   end {rss_mib(pid):.1f} MiB   "
          f"peak {max(peak):.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
