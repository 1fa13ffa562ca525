"""
Throughput benchmarks: training speed and sampling speed with and without the KV cache.

    python bench.py config/shakespeare_char.py            # any train config; its model, batch and device
    python bench.py config/shakespeare_char.py --json     # one JSON object, for scripts
    python bench.py config/shakespeare_char.py --what sample --sample_tokens 1000

Training: median ms per optimizer step over bench_iters steps (after warmup steps that are not timed),
tokens/s, and MFU: achieved FLOP/s (6N + attention per token, see train.flops_per_token) over the hardware's
peak (a GPU's datasheet, or on CPU a matmul measured right here, so MFU reads "share of what this CPU can
really do").

Sampling: median tokens/s of model.generate over `repeats` runs, with the KV cache and without it (the
cache-free path re-runs the whole context for every token), same model, prompt and random seed, so both
produce the same tokens. Random weights: speed does not depend on what the model has learned.
Two rows: `sample_tokens` new tokens from a 1-token prompt as asked, and, when that runs past block_size,
the longest generation that fits in the context, where the cache is never rebuilt (see model.GPT.stream).
"""

import json
import statistics
import time
from dataclasses import dataclass

import torch

from configurator import configure, main_guard
from model import GPT, GPTConfig
from train import TrainConfig, autocast, flops_per_token, make_optimizer, peak_flops, pick_device, pick_dtype


@dataclass
class BenchConfig(TrainConfig):  # every train setting (so train configs work here), plus:
    what: str = "all"  # 'train', 'sample' or 'all'
    vocab_size: int = 65  # random tokens of this vocabulary (no data needed)
    bench_iters: int = 10  # timed training steps
    warmup: int = 2  # untimed steps first (allocator, caches, compile)
    sample_tokens: int = 500
    repeats: int = 3
    json: bool = False


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(cfg):
    """The config's model with random weights (seeded: both benchmarks see the same model)."""
    torch.manual_seed(cfg.seed)
    return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, head=cfg.head))


def bench_train(cfg, device, dtype, ctx):
    model = build(cfg).to(device)
    opt = make_optimizer(model, cfg, device)
    fwd = torch.compile(model) if cfg.compile else model
    x = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    times = []
    for i in range(cfg.warmup + cfg.bench_iters):
        sync(device)
        t = time.perf_counter()
        for _ in range(cfg.gradient_accumulation_steps):
            with ctx:
                _, loss = fwd(x, x.roll(-1, dims=1))
            (loss / cfg.gradient_accumulation_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    peak = peak_flops(device, dtype)
    mfu = flops_per_token(model, cfg.block_size) * tokens / dt / peak if peak else None
    return {"params_M": model.num_params() / 1e6, "ms_per_iter": dt * 1000, "tokens_per_iter": tokens,
            "tokens_per_s": tokens / dt, "mfu": mfu, "peak_tflops": peak / 1e12 if peak else None}


def bench_sample(cfg, device, ctx):
    model = build(cfg).eval().to(device)
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    lengths = [cfg.sample_tokens]
    if cfg.sample_tokens + 1 > cfg.block_size:
        lengths.append(cfg.block_size - 1)  # the longest generation that stays inside the context
    rows = []
    for n in lengths:
        row = {"new_tokens": n, "block_size": cfg.block_size}
        outs = {}
        for use_cache in (True, False):
            times = []
            for _ in range(cfg.repeats):
                torch.manual_seed(cfg.seed)
                sync(device)
                t = time.perf_counter()
                with ctx:
                    outs[use_cache] = model.generate(prompt, n, use_cache=use_cache)
                sync(device)
                times.append(time.perf_counter() - t)
            row["cached_tok_s" if use_cache else "uncached_tok_s"] = n / statistics.median(times)
        row["speedup"] = row["cached_tok_s"] / row["uncached_tok_s"]
        row["same_tokens"] = bool(torch.equal(outs[True], outs[False]))
        rows.append(row)
    return rows


def main(argv=None):
    cfg = configure(BenchConfig, argv)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    ctx = autocast(device, dtype)
    result = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
              "dtype": dtype, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if cfg.what in ("train", "all"):
        result["train"] = bench_train(cfg, device, dtype, ctx)
    if cfg.what in ("sample", "all"):
        result["sample"] = bench_sample(cfg, device, ctx)
    if cfg.json:
        print(json.dumps(result))
        return
    print(f"device {result['device']}, {dtype}, {result['threads']} threads, torch {result['torch']}")
    if "train" in result:
        r = result["train"]
        mfu = f"{r['mfu'] * 100:.1f}% of {r['peak_tflops']:.2f} TFLOP/s" if r["mfu"] else "n/a"
        print(f"\ntraining ({cfg.n_layer}L {cfg.n_embd}d {cfg.n_head}h, {r['params_M']:.2f}M params, "
              f"{cfg.batch_size}x{cfg.block_size}x{cfg.gradient_accumulation_steps} tokens/iter)")
        print(f"  {r['ms_per_iter']:9.1f} ms/iter  {r['tokens_per_s']:12,.0f} tokens/s  MFU {mfu}")
    if "sample" in result:
        print(f"\nsampling (batch 1, block_size {cfg.block_size}, median of {cfg.repeats})")
        print(f"  {'new tokens':>10}  {'KV cache tok/s':>14}  {'no cache tok/s':>14}  {'speedup':>7}  same tokens")
        for r in result["sample"]:
            print(f"  {r['new_tokens']:>10}  {r['cached_tok_s']:>14.1f}  {r['uncached_tok_s']:>14.1f}  "
                  f"{r['speedup']:>6.2f}x  {r['same_tokens']}")


if __name__ == "__main__":
    main_guard(main)
