"""Load test of ``deepage serve``: a real uvicorn server in a subprocess on loopback, many async clients.

Starts the server (``--model`` checkpoint, default the bundled model) on ``127.0.0.1`` and a free port,
sends one warm-up request, then runs ``--clients`` concurrent httpx clients that each post the photo in a
loop until ``--duration`` seconds or ``--max-requests`` requests have passed. Prints requests/s, latency
percentiles of the successful requests, 503s (the server refusing work) apart from other errors, the
server's own queue/inference times, and the server process's resident memory before and after the load.

Example::

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py --model /tmp/mnv2_untrained.pt \
        --clients 50 --duration 30

``--max-concurrency`` defaults to ``--clients`` + 14, so the clients queue in the server rather than get
503s; set it below ``--clients`` to watch the server shed load instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO / "deepage" / "assets" / "astronaut.jpg"


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory of ``pid`` now and at its peak, MiB (Linux ``/proc``)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # kB
    return {"rss_mib": round(out["VmRSS"], 1), "peak_rss_mib": round(out["VmHWM"], 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-only", "--port", str(port),
           "--max-concurrency", str(args.max_concurrency), "--workers", str(args.workers)]
    if args.model:
        cmd += ["--model", str(args.model)]
    return subprocess.Popen(cmd, cwd=REPO)


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode} before answering")
        try:
            return httpx.get(f"{url}/healthz", timeout=2).raise_for_status().json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not answer {url}/healthz within {timeout_s:.0f} s")


async def load(url: str, image: bytes, clients: int, duration_s: float, max_requests: int,
               detect: bool) -> dict:
    """``clients`` tasks post ``image`` back to back until the time or request budget is spent."""
    latencies: list[float] = []
    server_times: list[tuple[float, float]] = []
    counts = {"sent": 0, "ok": 0, "busy_503": 0, "errors": 0}
    error_samples: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.perf_counter()
    deadline = started + duration_s

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and counts["sent"] < max_requests:
            counts["sent"] += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/predict", params={"detect": str(detect).lower()},
                                    files={"file": ("face.jpg", image, "image/jpeg")})
            except httpx.HTTPError as exc:
                counts["errors"] += 1
                error_samples.append(f"{type(exc).__name__}: {exc}")
                continue
            if r.status_code == 200:
                counts["ok"] += 1
                latencies.append(time.perf_counter() - t0)
                timing = r.json()["timing"]
                server_times.append((timing["queue_ms"], timing["inference_ms"]))
            elif r.status_code == 503:
                counts["busy_503"] += 1
            else:
                counts["errors"] += 1
                error_samples.append(f"HTTP {r.status_code}: {r.text[:200]}")

    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    lat_ms = np.asarray(latencies) * 1000
    queue_ms, infer_ms = (np.asarray(server_times).T if server_times else (np.zeros(1), np.zeros(1)))
    return {
        **counts, "seconds": round(elapsed, 2), "requests_per_s": round(counts["ok"] / elapsed, 2),
        "latency_ms": {k: round(float(np.percentile(lat_ms, q)), 1) if len(lat_ms) else None
                       for k, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "server_queue_ms_mean": round(float(queue_ms.mean()), 1),
        "server_inference_ms_mean": round(float(infer_ms.mean()), 1),
        "error_samples": error_samples[:5],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--image", default=str(DEFAULT_IMAGE), help="photo to post (default: the astronaut)")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    p.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="server admission limit (default clients + 14)")
    p.add_argument("--workers", type=int, default=1, help="server inference threads (default 1)")
    p.add_argument("--no-detect", action="store_true", help="post with detect=false (no face detector)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.max_concurrency is None:
        args.max_concurrency = args.clients + 14

    if args.serve_only:
        from deepage.inference.server import serve

        serve(host="127.0.0.1", port=args.port, model=args.model, max_concurrency=args.max_concurrency,
              workers=args.workers, log_level="warning")
        return 0

    image = Path(args.image).read_bytes()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        t0 = time.perf_counter()
        health = wait_until_up(url, proc)
        startup_s = time.perf_counter() - t0
        mem_idle = rss_mib(proc.pid)
        warm = httpx.post(f"{url}/predict", params={"detect": str(not args.no_detect).lower()},
                          files={"file": ("face.jpg", image, "image/jpeg")}, timeout=120)
        warm.raise_for_status()
        mem_before = rss_mib(proc.pid)
        result = asyncio.run(load(url, image, args.clients, args.duration, args.max_requests,
                                  detect=not args.no_detect))
        mem_after = rss_mib(proc.pid)
        after = httpx.get(f"{url}/healthz", timeout=10).json()
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully on SIGINT
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    report = {"model": health["model"], "image": args.image, "faces_in_image": len(warm.json()["faces"]),
              "clients": args.clients, "max_concurrency": args.max_concurrency, "workers": args.workers,
              "detect": not args.no_detect, "cpus": os.cpu_count(), "server_startup_s": round(startup_s, 1),
              "memory_idle": mem_idle, "memory_before_load": mem_before, "memory_after_load": mem_after,
              "server_counters_after": {k: after[k] for k in ("served", "rejected_busy", "timed_out")},
              **result}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    lat = result["latency_ms"]
    print(f"model            {report['model']}")
    print(f"load             {args.clients} clients, {result['seconds']} s, max_concurrency "
          f"{args.max_concurrency}, workers {args.workers}, detect {report['detect']}, {report['cpus']} CPUs")
    print(f"requests         {result['sent']} sent, {result['ok']} ok, {result['busy_503']} refused (503), "
          f"{result['errors']} errors")
    print(f"throughput       {result['requests_per_s']} requests/s")
    print(f"latency (ok)     p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
          f"max {lat['max']} ms")
    print(f"server side      mean queue {result['server_queue_ms_mean']} ms, mean inference "
          f"{result['server_inference_ms_mean']} ms")
    print(f"server RSS       idle {mem_idle['rss_mib']} MiB, after warm-up {mem_before['rss_mib']} MiB, "
          f"after load {mem_after['rss_mib']} MiB (peak {mem_after['peak_rss_mib']} MiB)")
    for sample in result["error_samples"]:
        print(f"  error: {sample}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
