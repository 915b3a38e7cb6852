"""Load on `baco serve` over loopback: many concurrent streaming clients, then one request at a time.

    python benchmarks/serve_load.py --tiny                       # the tiny random pair (seconds of CPU)
    python benchmarks/serve_load.py                               # the embedded Gemma pair (CPU-heavy)
    python benchmarks/serve_load.py --clients 32 --duration 60 --max-tokens 64

Starts `baco serve` as a child process on 127.0.0.1 (a free port; nothing else is reached) and runs
two phases against it, each for --duration seconds (requests in flight then finish; each is bounded
by --max-tokens):
  shared      --clients clients, each sending streaming chat requests one after another (seeds differ):
              their rows share the engine's batches
  one-by-one  a single client: the server decodes one request at a time
Reports errors, p50/p99 time to first token, p50/p99 per-token latency (the gap between streamed
chunks, divided by the tokens a chunk carries), total tokens/s of each phase, and the speed-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import openai
import requests

PROMPTS = ["Name a fruit and say why you like it.", "Write a two-line poem about the sea.",
           "Give me an idea for a weekend trip.", "Explain why the sky is blue.", "Tell me a short story about a fox.",
           "List three ways to save water.", "What makes a good friend?", "Describe your ideal breakfast."]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def stream_once(client, url: str, body: dict, stats: dict) -> None:
    """One streaming chat request, read as raw server-sent events (a light client: the server is measured)."""
    started, last, ttft, gaps, tokens = time.perf_counter(), None, None, [], 0
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            done = False
            async for line in response.aiter_lines():
                if line.startswith("data: [DONE]"):
                    done = True
                    break
                if not line.startswith("data: "):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                count = sum(len(choice.get("provenance") or []) for choice in chunk["choices"])
                if not count:
                    continue
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - started
                else:
                    gaps += [(now - last) / count] * count
                last, tokens = now, tokens + count
        if not done:
            raise RuntimeError("the stream ended without [DONE]")
        stats["requests"] += 1
        stats["tokens"] += tokens
        stats["per_token"] += gaps
        if ttft is not None:
            stats["ttft"].append(ttft)
    except Exception as error:  # noqa: BLE001 - counted and reported
        stats["errors"].append(f"{type(error).__name__}: {error}")


async def phase(url: str, clients: int, args) -> dict:
    """`clients` clients, each sending streaming requests back to back until the phase's time is up."""
    stats = {"ttft": [], "per_token": [], "tokens": 0, "requests": 0, "errors": []}
    started = time.perf_counter()
    stop_at = started + args.duration

    async def client_loop(client, index: int) -> None:
        k = 0
        while time.perf_counter() < stop_at:
            body = {"model": "baco", "messages": [{"role": "user", "content": PROMPTS[(index + k) % len(PROMPTS)]}],
                    "max_tokens": args.max_tokens, "seed": 1000 * index + k, "stream": True, "router": args.router}
            await stream_once(client, url, body, stats)
            k += 1

    # the HTTP client the openai package itself uses (httpx), one connection per client
    async with openai.DefaultAsyncHttpxClient(timeout=600) as client:
        await asyncio.gather(*(client_loop(client, i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": stats["requests"],
            "errors": len(stats["errors"]), "first_errors": stats["errors"][:3], "tokens": stats["tokens"],
            "tokens_per_s": round(stats["tokens"] / elapsed, 2),
            "ttft_p50_s": round(percentile(stats["ttft"], 0.5), 3),
            "ttft_p99_s": round(percentile(stats["ttft"], 0.99), 3),
            "token_p50_ms": round(1000 * percentile(stats["per_token"], 0.5), 1),
            "token_p99_ms": round(1000 * percentile(stats["per_token"], 0.99), 1)}


def start_server(args, models: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "baco.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(args.max_batch), "--max-len", str(args.max_len), "--max-queue", "1024",
               "--log-level", "warning", *models] + (["--threads", str(args.threads)] if args.threads else [])
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if requests.get(url + "/health", timeout=2).ok:
                return server, url
        except requests.ConnectionError:
            time.sleep(0.5)
    server.kill()
    sys.exit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny random pair instead of the embedded Gemma pair")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase (at most 600)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--router", default="p-punc:0.5")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (baco serve --threads)")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.duration <= 600:
        sys.exit("--clients must be in 1..256 and --duration in (0, 600]")
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        if args.tiny:
            from baco.testing import make_tiny_pair

            base, aligned = make_tiny_pair(tmp, context=max(256, args.max_len))
            models = ["--base", str(base), "--aligned", str(aligned)]
        server, url = start_server(args, models)
        try:
            asyncio.run(phase(url, min(args.clients, 4), argparse.Namespace(**{**vars(args), "duration": 2})))  # warm
            shared = asyncio.run(phase(url, args.clients, args))
            alone = asyncio.run(phase(url, 1, args))
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {"pair": "tiny" if args.tiny else "embedded", "router": args.router, "max_tokens": args.max_tokens,
              "threads": args.threads, "load_average": os.getloadavg()[0],
              "max_batch": args.max_batch, "max_len": args.max_len, "shared": shared, "one_by_one": alone,
              "speedup": round(shared["tokens_per_s"] / alone["tokens_per_s"], 2) if alone["tokens_per_s"] else None}
    print(json.dumps(result, indent=1))
    print("\n| phase | clients | requests | errors | TTFT p50 / p99 s | per-token p50 / p99 ms | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for name, p in (("shared batches", shared), ("one at a time", alone)):
        print(f"| {name} | {p['clients']} | {p['requests']} | {p['errors']} | {p['ttft_p50_s']} / {p['ttft_p99_s']} | "
              f"{p['token_p50_ms']} / {p['token_p99_ms']} | {p['tokens_per_s']} |")
    print(f"\nspeed-up of shared batches: {result['speedup']}x total tokens/s")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
