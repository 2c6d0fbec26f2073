"""Serve throughput: what request batching in ``poise serve`` buys over one request at a time.

Starts ``poise serve`` over a model (the organism by default) as a subprocess on 127.0.0.1 and
sends the same K greedy chat requests twice with poise's ``openai`` backend:

(a) from 32 concurrent clients (``OpenAIModel(concurrency=32)``), which the server batches into
    shared ``generate`` calls;
(b) one at a time (``OpenAIModel(concurrency=1)``), so every request is its own call.

It prints requests/s of both, the ratio (goal: >= 4x), how many ``generate`` calls the server
made in each phase, and whether both phases produced identical completions (greedy decoding
must not depend on the batch).

    python benchmarks/serve_throughput.py [--model organism] [--requests 128] [--concurrency 32]
        [--max-tokens 48] [--max-batch 32] [--batch-window-ms 5] [--threads 1]

When the organism is not built yet, the benchmark says so and serves a randomly initialised
tiny Llama built by the test fixtures instead (its figures are then not comparable).

The server runs with one torch thread by default (``--threads``): on a machine whose cores are
shared, several OpenMP threads per process oversubscribe the cores and batched matrix products
slow down by orders of magnitude, which would measure the neighbours rather than the server.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resolve_model(spec: str, workdir: Path) -> str:
    """``spec``, or a tiny random HF folder when ``spec`` is an organism member not yet built."""
    from poise.errors import PoiseError
    from poise.organism import is_member, member_path

    if not is_member(spec):
        return spec
    try:
        member_path(spec)
        return spec
    except PoiseError as exc:
        print(f"note: {exc}")
    conftest = REPO / "tests" / "conftest.py"
    module_spec = importlib.util.spec_from_file_location("_poise_test_fixtures", conftest)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"cannot fall back to a tiny model: {conftest} is missing")
    fixtures = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(fixtures)
    folder = fixtures.build_tiny_hf_model(workdir / "tiny-llama")
    print(
        "note: falling back to a randomly initialised tiny Llama (tests/conftest.py); "
        "these figures are NOT the organism's"
    )
    return str(folder)


def prompts(count: int) -> list[list[dict[str, str]]]:
    """``count`` distinct user prompts from the built-in suites (cycled with a suffix if short)."""
    texts: list[str] = []
    try:
        from poise.suites import load_suite

        for suite in ("benign", "borderline", "harmful", "honesty"):
            texts += [item.messages[-1]["content"] for item in load_suite(suite).items]
    except Exception as exc:  # the benchmark still runs without the suites
        print(f"note: built-in suites unavailable ({exc}); using generated prompts")
    if not texts:
        texts = [f"Tell me something useful about topic number {i}." for i in range(count)]
    chosen = [texts[i % len(texts)] + ("" if i < len(texts) else f" ({i})") for i in range(count)]
    return [[{"role": "user", "content": t}] for t in chosen]


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise SystemExit(f"poise serve exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"poise serve did not become healthy:\n{log.read_text()}")
        time.sleep(0.2)


def health(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/health", timeout=10).json())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="organism", help="model spec to serve")
    parser.add_argument("--requests", type=int, default=128, help="K: requests per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in phase (a)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the server (OMP_NUM_THREADS); 0 = torch's default",
    )
    args = parser.parse_args()

    from poise.config import Sampling
    from poise.models.openai import OpenAIModel

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = resolve_model(args.model, workdir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = workdir / "serve.log"
        command = [
            sys.executable, "-m", "poise.cli", "serve", "--model", model,
            "--served-name", "bench", "--host", "127.0.0.1", "--port", str(port),
            "--max-batch", str(args.max_batch), "--batch-window-ms", str(args.batch_window_ms),
        ]  # fmt: skip
        env = {**os.environ, "NO_COLOR": "1"}
        if args.threads > 0:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        with log.open("wb") as sink:
            server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:
            wait_healthy(url, server, log, timeout=300)
            chats = prompts(args.requests)
            sampling = Sampling(max_new_tokens=args.max_tokens)  # greedy
            concurrent = OpenAIModel("bench", base_urls=[f"{url}/v1"], concurrency=args.concurrency)
            sequential = OpenAIModel("bench", base_urls=[f"{url}/v1"], concurrency=1)
            concurrent.generate(chats[: args.concurrency], sampling)  # warm-up (not timed)

            calls_0 = health(url)["generate_calls"]
            start = time.perf_counter()
            batched_out = concurrent.generate(chats, sampling)
            t_batched = time.perf_counter() - start
            calls_1 = health(url)["generate_calls"]
            start = time.perf_counter()
            single_out = sequential.generate(chats, sampling)
            t_single = time.perf_counter() - start
            calls_2 = health(url)["generate_calls"]
        finally:
            server.terminate()
            server.wait(timeout=30)

    k = args.requests
    rate_batched, rate_single = k / t_batched, k / t_single
    tokens = sum(c.num_tokens for row in batched_out for c in row)
    print(f"model: {args.model if model == args.model else model + ' (fallback)'}")
    threads = args.threads or "torch default"
    print(
        f"{k} greedy requests, max_tokens={args.max_tokens}, {tokens} completion tokens, "
        f"server threads: {threads}"
    )
    print(
        f"(a) {args.concurrency} concurrent clients: {rate_batched:7.2f} req/s "
        f"({t_batched:6.2f} s, {calls_1 - calls_0} generate calls)"
    )
    print(
        f"(b) one at a time:        {rate_single:7.2f} req/s "
        f"({t_single:6.2f} s, {calls_2 - calls_1} generate calls)"
    )
    print(f"ratio (a)/(b): {rate_batched / rate_single:.2f}x (goal >= 4x)")
    same = [[c.text for c in r] for r in batched_out] == [[c.text for c in r] for r in single_out]
    print(f"identical completions in both phases: {'yes' if same else 'NO'}")
    reproduce = ["python", "benchmarks/serve_throughput.py", "--model", args.model,
                 "--requests", str(k), "--concurrency", str(args.concurrency),
                 "--max-tokens", str(args.max_tokens), "--max-batch", str(args.max_batch),
                 "--batch-window-ms", str(args.batch_window_ms),
                 "--threads", str(args.threads)]  # fmt: skip
    print(f"reproduce: {shlex.join(reproduce)}")


if __name__ == "__main__":
    main()
