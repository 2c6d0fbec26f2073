"""Serving benchmarks of ``poise serve``, three modes, each running all its sides in one invocation.

``batching`` (default): what batching buys over one request at a time. Serves a model (the
organism by default) and sends the same K greedy requests twice with poise's ``openai`` backend:
(a) from 32 concurrent clients, (b) one at a time. Prints requests/s of both and the ratio (goal
>= 4x), and whether both phases gave identical completions.

``latency``: a streamed 96-token greedy answer's first content chunk must arrive within 25% of
the total response time (goal), and the streamed text must equal the non-streamed text. Serves a
~90M-parameter Llama built in code (hidden 640, 10 layers, vocab 32k), sends the plain request
and the streamed one, repeats, and prints both times, the share and the text check.

``transformers``: throughput and time to first token against ``transformers serve
--continuous-batching`` on that same model folder. Each server runs alone, in turn, with the
same torch threads; 32 concurrent clients send K streamed greedy requests (``max_tokens`` 64),
after a warm-up round. Prints completion tokens/s (counted from each server's ``usage``), tokens
per CPU-second of the server process (all its threads; steadier than wall time on a shared
machine), the median and p90 time to first content chunk, the ratios (goal: >= 1.5x throughput,
time to first token no worse), and whether the two servers' greedy texts agree.

    python benchmarks/serve_throughput.py [--mode batching] [--model organism] [--requests 128]
    python benchmarks/serve_throughput.py --mode latency [--max-tokens 96] [--repeats 3]
    python benchmarks/serve_throughput.py --mode transformers [--requests 128] [--max-tokens 64]

Everything runs on 127.0.0.1 with ``HF_HUB_OFFLINE=1``; the built model lives in a temporary
folder. Servers run with one torch thread by default (``--threads``): on a machine whose cores
are shared, several OpenMP threads per process oversubscribe the cores and batched matrix
products slow down by orders of magnitude, which would measure the neighbours, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- models ------------------------------------------------------------------------------------------


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


CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_llama_90m(path: Path, *, seed: int = 0) -> Path:
    """A randomly initialised ~90M-parameter Llama (hidden 640, 10 layers of 10 heads, MLP 1728,
    vocab 32,000, untied head) with a byte-level BPE tokenizer and a chat template, saved to
    ``path`` (safetensors, float32). The vocabulary is printable ASCII plus merges of two
    characters and of a letter and a letter pair, so every token decodes to valid text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    vocab_size = 32_000
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    chars = [chr(b) for b in range(33, 127)] + ["Ġ", "Ċ"]  # GPT-2's byte map: space, newline
    vocab: dict[str, int] = {}
    for token in (*specials, *chars):
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    letters = [c for c in chars if c.isalpha()] + ["Ġ"]
    pairs = itertools.product(chars, chars)
    triples = itertools.product(letters, ["".join(p) for p in itertools.product(letters, letters)])
    for left, right in itertools.chain(pairs, triples):
        if len(vocab) >= vocab_size:
            break
        if left + right not in vocab:
            merges.append((left, right))
            vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=640,
        intermediate_size=1728,
        num_hidden_layers=10,
        num_attention_heads=10,
        num_key_value_heads=10,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"]
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: random Llama, {params / 1e6:.1f}M parameters, built in {path}")
    return path


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


# -- servers -----------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess on 127.0.0.1."""

    name: str
    url: str
    model_field: str  # what requests send as "model"
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def server_env(threads: int, src: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if src is not None:  # serve poise from another source tree (the --against side)
        env["PYTHONPATH"] = str(src)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def start(
    name: str,
    command: list[str],
    url: str,
    model_field: str,
    log: Path,
    threads: int,
    src: Path | None = None,
) -> Server:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=server_env(threads, src)
        )
    server = Server(name, url, model_field, process, log)
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise SystemExit(f"{name} did not become healthy:\n{log.read_text()}")
        time.sleep(0.2)


def start_poise(
    model: str,
    workdir: Path,
    threads: int,
    max_batch: int = 32,
    window_ms: float = 5.0,
    join_rows: int | None = 8,
    src: Path | None = None,
) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "poise.cli", "serve", "--model", model,
        "--served-name", "bench", "--host", "127.0.0.1", "--port", str(port),
        "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms),
    ]  # fmt: skip
    if join_rows is not None:  # a server from before continuous batching has no --join-rows
        command += ["--join-rows", str(join_rows)]
    url = f"http://127.0.0.1:{port}"
    log = workdir / f"poise-{'against' if src else 'this'}.log"
    return start("poise serve", command, url, "bench", log, threads, src)


def start_transformers(model: str, workdir: Path, threads: int) -> Server:
    port = free_port()
    executable = Path(sys.executable).with_name("transformers")
    command = [
        str(executable), "serve", model, "--continuous-batching", "--device", "cpu",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return start("transformers serve", command, url, model, workdir / "transformers.log", threads)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/health", timeout=10).json())


# -- clients -----------------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    tokens: int  # completion tokens as the server's usage reports them
    first_chunk_s: float | None  # request sent -> first non-empty content delta
    total_s: float


async def streamed(
    client: httpx.AsyncClient, server: Server, chat: list[dict[str, str]], max_tokens: int
) -> Answer:
    body = {
        "model": server.model_field,
        "messages": chat,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first: float | None = None
    text, tokens, chunks = "", 0, 0
    async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(
                f"{server.name}: HTTP {response.status_code}: {await response.aread()}"
            )
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise SystemExit(f"{server.name}: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    if first is None:
                        first = time.perf_counter() - sent
                    text += content
                    chunks += 1
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return Answer(text, tokens or chunks, first, time.perf_counter() - sent)


async def plain(
    client: httpx.AsyncClient, server: Server, chat: list[dict[str, str]], max_tokens: int
) -> Answer:
    body = {
        "model": server.model_field,
        "messages": chat,
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    sent = time.perf_counter()
    response = await client.post(f"{server.url}/v1/chat/completions", json=body)
    total = time.perf_counter() - sent
    if response.status_code != 200:
        raise SystemExit(f"{server.name}: HTTP {response.status_code}: {response.text}")
    data = response.json()
    return Answer(
        data["choices"][0]["message"]["content"],
        int(data["usage"]["completion_tokens"]),
        None,
        total,
    )


async def load(
    server: Server, chats: Sequence[list[dict[str, str]]], clients: int, max_tokens: int
) -> tuple[list[Answer], float]:
    """``clients`` concurrent clients streaming ``chats`` (each client takes the next chat when
    its answer is complete); the answers in the order of ``chats`` and the wall time."""
    answers: list[Answer | None] = [None] * len(chats)
    queue = iter(range(len(chats)))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in queue:
            answers[index] = await streamed(client, server, chats[index], max_tokens)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return [a for a in answers if a is not None], wall


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- modes -------------------------------------------------------------------------------------------


def mode_batching(args: argparse.Namespace, workdir: Path) -> None:
    from poise.config import Sampling
    from poise.models.openai import OpenAIModel

    model = resolve_model(args.model, workdir)
    server = start_poise(
        model, workdir, args.threads, args.max_batch, args.batch_window_ms, args.join_rows
    )
    url = server.url
    try:
        chats = prompts(args.requests)
        sampling = Sampling(max_new_tokens=args.max_tokens)  # greedy
        concurrent = OpenAIModel("bench", base_urls=[f"{url}/v1"], concurrency=args.concurrency)
        sequential = OpenAIModel("bench", base_urls=[f"{url}/v1"], concurrency=1)
        concurrent.generate(chats[: args.concurrency], sampling)  # warm-up (not timed)

        h0 = health(url)
        start_time = time.perf_counter()
        batched_out = concurrent.generate(chats, sampling)
        t_batched = time.perf_counter() - start_time
        h1 = health(url)
        start_time = time.perf_counter()
        single_out = sequential.generate(chats, sampling)
        t_single = time.perf_counter() - start_time
        h2 = health(url)
    finally:
        server.stop()

    def work(before: dict[str, Any], after: dict[str, Any]) -> str:
        if after.get("batching") == "continuous":
            return f"{after['steps'] - before['steps']} engine steps"
        return f"{after['generate_calls'] - before['generate_calls']} generate calls"

    k = args.requests
    rate_batched, rate_single = k / t_batched, k / t_single
    tokens = sum(c.num_tokens for row in batched_out for c in row)
    print(f"model: {args.model if model == args.model else model + ' (fallback)'}")
    print(f"batching: {h2.get('batching', 'batch')}")
    print(
        f"{k} greedy requests, max_tokens={args.max_tokens}, {tokens} completion tokens, "
        f"server threads: {args.threads or 'torch default'}"
    )
    print(
        f"(a) {args.concurrency} concurrent clients: {rate_batched:7.2f} req/s "
        f"({t_batched:6.2f} s, {work(h0, h1)})"
    )
    print(f"(b) one at a time:        {rate_single:7.2f} req/s ({t_single:6.2f} s, {work(h1, h2)})")
    print(f"ratio (a)/(b): {rate_batched / rate_single:.2f}x (goal >= 4x)")
    same = [[c.text for c in r] for r in batched_out] == [[c.text for c in r] for r in single_out]
    print(f"identical completions in both phases: {'yes' if same else 'NO'}")


def against_tree(path: str, threads: int) -> Path:
    """The ``--against`` folder, checked before any server starts: a child with its environment
    must import ``poise`` from there. Where it does not (a tree's root given instead of its
    ``src``, a typo), the child falls back to the installed poise, i.e. this tree, and the
    benchmark would measure this tree against itself."""
    src = Path(path).resolve()
    if not (src / "poise" / "__init__.py").is_file():
        raise SystemExit(
            f"--against {path}: no poise package there (give the other tree's src folder, "
            "the one holding poise/__init__.py)"
        )
    this = Path(__file__).resolve().parents[1] / "src"
    if src == this:
        raise SystemExit(f"--against {path}: that is this tree's own src folder")
    found = subprocess.run(
        [sys.executable, "-c", "import poise; print(poise.__file__)"],
        env=server_env(threads, src),
        capture_output=True,
        text=True,
    )
    imported = Path(found.stdout.strip()).resolve() if found.returncode == 0 else None
    if imported != src / "poise" / "__init__.py":
        error = found.stderr.strip().splitlines()
        raise SystemExit(
            f"--against {path}: a server started with it imports poise from "
            f"{imported or 'nowhere'}, not from that folder" + (f" ({error[-1]})" if error else "")
        )
    return src


def mode_against(args: argparse.Namespace, workdir: Path) -> None:
    """This tree's ``poise serve`` against another source tree's (``--against SRC``), in turn.

    Each round starts both servers one after the other and sends each the same K greedy requests
    from ``--concurrency`` clients after a warm-up; it prints requests/s (wall) and the server
    process's CPU milliseconds per request (all threads; steadier than wall time on a shared
    machine), then the medians and their ratios.
    """
    from poise.config import Sampling
    from poise.models.openai import OpenAIModel

    if args.against is None:
        raise SystemExit("--mode against needs --against SRC (a poise source tree's src folder)")
    against = against_tree(args.against, args.threads)
    model = resolve_model(args.model, workdir)
    chats = prompts(args.requests)
    sampling = Sampling(max_new_tokens=args.max_tokens)  # greedy
    rates: dict[str, list[float]] = {"this": [], "against": []}
    cpu_ms: dict[str, list[float]] = {"this": [], "against": []}
    texts: dict[str, list[list[str]]] = {}
    for _ in range(args.repeats):
        for side in ("this", "against"):
            src = against if side == "against" else None
            join = args.join_rows if side == "this" else args.against_join_rows
            server = start_poise(
                model, workdir, args.threads, args.max_batch, args.batch_window_ms, join, src
            )
            try:
                client = OpenAIModel(
                    "bench", base_urls=[f"{server.url}/v1"], concurrency=args.concurrency
                )
                client.generate(chats[: args.concurrency], sampling)  # warm-up (not timed)
                cpu0, t0 = cpu_seconds(server.process.pid), time.perf_counter()
                out = client.generate(chats, sampling)
                wall = time.perf_counter() - t0
                cpu = cpu_seconds(server.process.pid) - cpu0
            finally:
                server.stop()
            rates[side].append(len(chats) / wall)
            cpu_ms[side].append(1000 * cpu / len(chats))
            texts[side] = [[c.text for c in row] for row in out]
            print(
                f"{side:>8}: {rates[side][-1]:7.2f} req/s, "
                f"{cpu_ms[side][-1]:6.2f} server CPU-ms per request"
            )
    med = {side: statistics.median(v) for side, v in rates.items()}
    med_cpu = {side: statistics.median(v) for side, v in cpu_ms.items()}
    print(
        f"model: {args.model}; {len(chats)} greedy requests, max_tokens={args.max_tokens}, "
        f"{args.concurrency} clients, {args.repeats} rounds, against {against}"
    )
    print(
        f"median req/s: this {med['this']:.2f}, against {med['against']:.2f}: "
        f"{med['this'] / med['against']:.2f}x"
    )
    print(
        f"median server CPU-ms per request: this {med_cpu['this']:.2f}, against "
        f"{med_cpu['against']:.2f}: {med_cpu['against'] / med_cpu['this']:.2f}x (>1: this is cheaper)"
    )
    print(f"identical completions: {'yes' if texts['this'] == texts['against'] else 'NO'}")


def mode_latency(args: argparse.Namespace, workdir: Path) -> None:
    folder = build_llama_90m(workdir / "llama-90m")
    server = start_poise(str(folder), workdir, args.threads)
    chat = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    rows: list[tuple[Answer, Answer]] = []
    try:
        print(f"batching: {health(server.url).get('batching', 'batch')}")

        async def one_round() -> tuple[Answer, Answer]:
            async with httpx.AsyncClient(timeout=600) as client:
                whole = await plain(client, server, chat, args.max_tokens)
                stream = await streamed(client, server, chat, args.max_tokens)
            return whole, stream

        asyncio.run(one_round())  # warm-up (not counted)
        for _ in range(args.repeats):
            rows.append(asyncio.run(one_round()))
    finally:
        server.stop()

    print(
        f"one streamed greedy request at a time, max_tokens={args.max_tokens}, threads {args.threads}"
    )
    shares = []
    for i, (whole, stream) in enumerate(rows):
        assert stream.first_chunk_s is not None, "the stream sent no content"
        share = stream.first_chunk_s / stream.total_s
        shares.append(share)
        print(
            f"  round {i + 1}: {stream.tokens} tokens; first content chunk {stream.first_chunk_s:.3f} s "
            f"of {stream.total_s:.3f} s = {share:.1%}; non-streamed {whole.total_s:.3f} s; "
            f"streamed text == non-streamed text: {'yes' if stream.text == whole.text else 'NO'}"
        )
    share = statistics.median(shares)
    same = all(stream.text == whole.text for whole, stream in rows)
    full = all(stream.tokens == args.max_tokens for _, stream in rows)
    print(f"median share: {share:.1%} (goal <= 25%: {'met' if share <= 0.25 else 'NOT met'})")
    print(f"streamed text == non-streamed text in every round: {'yes' if same else 'NO'}")
    if not full:
        print(f"note: an answer ended before {args.max_tokens} tokens (the model chose EOS)")
    if not same or share > 0.25:
        raise SystemExit(1)


def mode_transformers(args: argparse.Namespace, workdir: Path) -> None:
    folder = str(build_llama_90m(workdir / "llama-90m"))
    chats = prompts(args.requests)
    warm = prompts(args.concurrency)
    # per side and repeat: the answers, the wall time, the server's CPU seconds
    results: dict[str, list[tuple[list[Answer], float, float]]] = {"poise": [], "transformers": []}
    sides = args.sides
    for repeat in range(args.repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            server = (
                start_poise(
                    folder,
                    workdir,
                    args.threads,
                    args.max_batch,
                    args.batch_window_ms,
                    args.join_rows,
                )
                if side == "poise"
                else start_transformers(folder, workdir, args.threads)
            )
            try:
                asyncio.run(load(server, warm, args.concurrency, args.max_tokens))  # warm-up
                cpu_before = cpu_seconds(server.process.pid)
                answers, wall = asyncio.run(load(server, chats, args.concurrency, args.max_tokens))
                cpu = cpu_seconds(server.process.pid) - cpu_before
            finally:
                server.stop()
            tokens = sum(a.tokens for a in answers)
            ttft = [a.first_chunk_s for a in answers if a.first_chunk_s is not None]
            print(
                f"  {side:12s} repeat {repeat + 1}: {wall:6.2f} s, {tokens} tokens, "
                f"{tokens / wall:7.1f} tokens/s, {tokens / cpu:7.1f} tokens per server CPU-s, "
                f"TTFT median {statistics.median(ttft):.2f} s, p90 {quantile(ttft, 0.9):.2f} s"
            )
            results[side].append((answers, wall, cpu))

    def summary(side: str) -> tuple[float, float, float, float]:
        rates, per_cpu, medians, p90s = [], [], [], []
        for answers, wall, cpu in results[side]:
            rates.append(sum(a.tokens for a in answers) / wall)
            per_cpu.append(sum(a.tokens for a in answers) / cpu)
            ttft = [a.first_chunk_s for a in answers if a.first_chunk_s is not None]
            medians.append(statistics.median(ttft))
            p90s.append(quantile(ttft, 0.9))
        return (
            statistics.median(rates),
            statistics.median(medians),
            statistics.median(p90s),
            statistics.median(per_cpu),
        )

    if len(sides) < 2:
        return
    ours, theirs = summary("poise"), summary("transformers")
    print(
        f"{args.requests} streamed greedy requests, {args.concurrency} concurrent clients, "
        f"max_tokens={args.max_tokens}, server threads {args.threads}, medians of {args.repeats}"
    )
    print("| side | tokens/s | tokens per server CPU-second | TTFT median | TTFT p90 |")
    print("|---|---|---|---|---|")
    for side, (rate, median, p90, per_cpu) in (
        ("poise serve", ours),
        ("transformers serve --cb", theirs),
    ):
        print(f"| {side} | {rate:.1f} | {per_cpu:.1f} | {median:.2f} s | {p90:.2f} s |")
    ratio = ours[0] / theirs[0]
    print(f"tokens per server CPU-second poise / transformers: {ours[3] / theirs[3]:.2f}x")
    print(
        f"throughput poise / transformers: {ratio:.2f}x (goal >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})"
    )
    print(
        f"TTFT median poise / transformers: {ours[1] / theirs[1]:.2f}x "
        f"(goal <= 1.0x: {'met' if ours[1] <= theirs[1] else 'NOT met'})"
    )
    ours_text = [a.text for a in results["poise"][0][0]]  # first repeat of each side
    theirs_text = [a.text for a in results["transformers"][0][0]]
    agree = sum(a == b for a, b in zip(ours_text, theirs_text, strict=True))
    print(f"greedy texts identical between the servers: {agree} of {len(ours_text)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--mode", choices=["batching", "latency", "transformers", "against"], default="batching"
    )
    parser.add_argument(
        "--against", default=None, help="against mode: another poise source tree's src folder"
    )
    parser.add_argument(
        "--against-join-rows",
        type=int,
        default=None,
        help="against mode: --join-rows for the other tree's server (default: do not pass it)",
    )
    parser.add_argument("--model", default="organism", help="model spec to serve (batching mode)")
    parser.add_argument("--requests", type=int, default=128, help="K: requests per phase")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="default: 48, 96 or 64 by mode"
    )
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--join-rows", type=int, default=8, help="poise serve --join-rows")
    parser.add_argument(
        "--sides",
        nargs="+",
        choices=["poise", "transformers"],
        default=["poise", "transformers"],
        help="transformers mode: the servers to run (both for the ratios)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="default: 3 (latency), 1 (transformers)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the servers (OMP_NUM_THREADS); 0 = torch's default",
    )
    args = parser.parse_args()
    if args.max_tokens is None:
        args.max_tokens = {"batching": 48, "latency": 96, "transformers": 64, "against": 48}[
            args.mode
        ]
    if args.repeats is None:
        args.repeats = {"latency": 3, "against": 3}.get(args.mode, 1)
    with tempfile.TemporaryDirectory() as tmp:
        modes = {
            "batching": mode_batching,
            "latency": mode_latency,
            "transformers": mode_transformers,
            "against": mode_against,
        }
        modes[args.mode](args, Path(tmp))
    print(f"reproduce: {shlex.join(['python', 'benchmarks/serve_throughput.py', *sys.argv[1:]])}")


if __name__ == "__main__":
    main()
