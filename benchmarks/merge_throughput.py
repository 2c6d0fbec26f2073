"""Merge time and peak memory: `poise merge` against `mergekit-yaml` on the same config and models.

Builds a Llama-architecture base of about 134M parameters in code (hidden 768, 12 layers, vocab
32000, bfloat16 on disk) and two "specialists" (base + seeded noise), then, for linear, TIES and
DARE (linear), runs both tools as subprocesses on one YAML config and reports wall time and peak
resident memory (the child's ru_maxrss), alternating the sides over ``--repeats`` rounds. Both
sides compute in float32 and write bfloat16, one torch thread each. It also checks that the
outputs agree (linear and TIES are deterministic and share semantics at equal weights).

Then TSV-M (poise only; mergekit has no singular-vector method): the whole merge with the exact
SVD and with the randomised SVD, and the SVD cost per layer shape (exact vs ``torch.svd_lowrank``)
with the randomised merge's relative error against the exact one on that layer.

    python benchmarks/merge_throughput.py            # about 10 minutes on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, LAYERS, INTERMEDIATE, VOCAB = 768, 12, 2048, 32000


def build_models(root: Path) -> list[Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=12,
        num_key_value_heads=12,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.1f}M parameters, bfloat16 on disk")
    paths = []
    for i, name in enumerate(("base", "a", "b")):
        if i:
            g = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
        path = root / name
        model.to(torch.bfloat16).save_pretrained(path)
        model.to(torch.float32)
        paths.append(path)
    return paths


def config_text(method: str, base: Path, a: Path, b: Path) -> str:
    per_model = {"linear": "{weight: 0.5}", "ties": "{weight: 0.5, density: 0.5}"}
    per_model["dare_linear"] = per_model["ties"]
    params = per_model[method]
    models = f"  - model: {a}\n    parameters: {params}\n  - model: {b}\n    parameters: {params}\n"
    base_line = f"base_model: {base}\n" if method != "linear" else ""
    if method == "linear":
        models = f"  - model: {base}\n    parameters: {{weight: 0.5}}\n" + models
    return (
        f"merge_method: {method}\n{base_line}models:\n{models}dtype: float32\nout_dtype: bfloat16\n"
    )


def run_side(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{command[0]} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def compare_tools(paths: list[Path], work: Path, repeats: int) -> None:
    bin_dir = Path(sys.executable).parent
    mergekit = [str(bin_dir / "mergekit-yaml")]
    poise = [sys.executable, "-m", "poise.cli", "merge"]
    print(
        "\n| method | poise time | mergekit time | time ratio | poise peak RSS | mergekit peak RSS | memory ratio | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method in ("linear", "ties", "dare_linear"):
        cfg = work / f"{method}.yml"
        cfg.write_text(config_text(method, *paths))
        times: dict[str, list[float]] = {"poise": [], "mergekit": []}
        peaks: dict[str, list[float]] = {"poise": [], "mergekit": []}
        for r in range(repeats):
            order = ("poise", "mergekit") if r % 2 == 0 else ("mergekit", "poise")
            for side in order:
                out = work / f"{method}-{side}-{r}"
                cmd = [*(poise if side == "poise" else mergekit), str(cfg), str(out)]
                if side == "mergekit":
                    cmd += ["--quiet", "-j", "1"]
                wall, peak = run_side(cmd)
                times[side].append(wall)
                peaks[side].append(peak)
        a, b = load(work / f"{method}-poise-0"), load(work / f"{method}-mergekit-0")
        diff = (
            max((a[k].float() - b[k].float()).abs().max().item() for k in a)
            if method != "dare_linear"
            else float("nan")  # random masks differ
        )
        tp, tm = statistics.median(times["poise"]), statistics.median(times["mergekit"])
        mp, mm = statistics.median(peaks["poise"]), statistics.median(peaks["mergekit"])
        print(
            f"| {method} | {tp:.1f} s | {tm:.1f} s | {tp / tm:.2f}x | {mp:.0f} MiB | {mm:.0f} MiB "
            f"| {mp / mm:.2f}x | {diff:.3g} |",
            flush=True,
        )
        for r in range(repeats):
            for side in ("poise", "mergekit"):
                subprocess.run(["rm", "-rf", str(work / f"{method}-{side}-{r}")], check=True)


def shard_sweep(paths: list[Path], work: Path) -> None:
    """poise's peak memory against its output shard size (linear merge): the executor holds one
    output shard, so a smaller shard lowers the peak while the inputs' size stays the same."""
    poise = [sys.executable, "-m", "poise.cli", "merge"]
    cfg = work / "linear.yml"
    cfg.write_text(config_text("linear", *paths))
    print("\npoise peak memory vs --shard-size (linear):")
    print("| --shard-size | time | peak RSS | output (safetensors) |")
    print("|---|---|---|---|")
    for size in ("5GB", "64MB"):
        out = work / f"sweep-{size}"
        wall, peak = run_side([*poise, str(cfg), str(out), "--shard-size", size])
        # measured on the output itself, before it is removed
        size_mb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e6
        print(f"| {size} | {wall:.1f} s | {peak:.0f} MiB | {size_mb:.0f} MB |", flush=True)
        subprocess.run(["rm", "-rf", str(out)], check=True)


def tsv(paths: list[Path], work: Path) -> None:
    poise = [sys.executable, "-m", "poise.cli", "merge"]
    print("\nTSV-M (poise), whole model:")
    print("| svd | time | peak RSS |")
    print("|---|---|---|")
    base, a, b = paths
    for svd in ("exact", "randomized"):
        cfg = work / f"tsv-{svd}.yml"
        cfg.write_text(
            f"merge_method: tsv_m\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
            f"parameters: {{svd: {svd}}}\ndtype: float32\nout_dtype: bfloat16\n"
        )
        wall, peak = run_side([*poise, str(cfg), str(work / f"tsv-{svd}")])
        print(f"| {svd} | {wall:.1f} s | {peak:.0f} MiB |", flush=True)
    exact_out, approx_out = load(work / "tsv-exact"), load(work / "tsv-randomized")
    base_w = load(base)
    errors = [
        float(torch.linalg.norm(approx_out[k].float() - exact_out[k].float())
              / torch.linalg.norm(exact_out[k].float() - base_w[k].float()))
        for k in exact_out if exact_out[k].dim() == 2
    ]  # fmt: skip
    print(f"randomised vs exact, relative error of the merged task vector per matrix: "
          f"median {statistics.median(errors):.3g}, max {max(errors):.3g}")  # fmt: skip

    from poise.merge.singular import truncated_svd

    torch.set_num_threads(1)
    print("\nSVD cost per layer shape (one task vector, rank k/2 kept, 1 thread):")
    print("| weight | shape | exact SVD | randomised SVD | ratio |")
    print("|---|---|---|---|---|")
    a_w = load(a)
    warm = torch.randn(256, 128)  # first calls set LAPACK and the randomised path up, not timed
    truncated_svd(warm, 64)
    truncated_svd(warm, 64, svd="randomized")
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.embed_tokens.weight"):  # fmt: skip
        delta = a_w[name].float() - base_w[name].float()
        rank = min(delta.shape) // 2
        t0 = time.perf_counter()
        truncated_svd(delta, rank)
        t1 = time.perf_counter()
        truncated_svd(delta, rank, svd="randomized")
        t2 = time.perf_counter()
        print(f"| {name} | {list(delta.shape)} | {t1 - t0:.2f} s | {t2 - t1:.2f} s "
              f"| {(t1 - t0) / (t2 - t1):.1f}x |", flush=True)  # fmt: skip
    per_layer = sum(1 for k in exact_out if ".layers.0." in k and exact_out[k].dim() == 2)
    print(f"({per_layer} matrices per decoder layer, {LAYERS} layers, 2 task SVDs each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-tsv", action="store_true")
    parser.add_argument("--skip-compare", action="store_true", help="skip poise vs mergekit")
    parser.add_argument("--shard-sweep", action="store_true", help="poise memory vs shard size")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
        work = Path(tmp)
        paths = build_models(work)
        if not args.skip_compare:
            compare_tools(paths, work, args.repeats)
        if args.shard_sweep:
            shard_sweep(paths, work)
        if not args.skip_tsv:
            tsv(paths, work)
    print(json.dumps({"torch_threads": 1, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
