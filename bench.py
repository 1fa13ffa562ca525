"""
Throughput benchmarks: training speed, sampling speed with and without the KV cache, and the BPE tokenizer.

    python bench.py config/shakespeare_char.py            # any train config; its model, batch and device
    python bench.py config/shakespeare_char.py --json     # one JSON object, for scripts
    python bench.py config/shakespeare_char.py --what sample --sample_tokens 1000   # eager, cached, compiled
    python bench.py config/owt_gpt2.py --what grid --vocab_size 50257 --gradient_accumulation_steps 1  # a GPU's table
    python bench.py --what tokenizer --text_file input.txt   # BPE vs HuggingFace tokenizers and tiktoken
    python bench.py config/owt_gpt2.py --what hellaswag --vocab_size 50257   # ms per HellaSwag example

Training: median ms per optimizer step over bench_iters steps (after warmup steps that are not timed),
tokens/s, and MFU: achieved FLOP/s (6N + attention per token, see metrics.flops_per_token) over the hardware's
peak (a GPU's datasheet, or on CPU a matmul measured right here, so MFU reads "share of what this CPU can
really do"). On a GPU the peak is the datasheet's dense tensor-core number for the training dtype: bf16/fp16,
or TF32 for float32 (train.py runs float32 matmuls as TF32, model.allow_tf32); peak memory is the most the
step had allocated.

Grid (`--what grid`): training for every head, eager and compiled, each in a fresh process (its own compile,
its own memory peak), then sampling: the README's GPU table in one command.

Sampling: median tokens/s of generate.generate over `repeats` runs (all rows of the batch together) three
ways: without the KV cache (the whole context re-run for every token), with it, and with the compiled decode
step (compile=True: a static cache, one graph per step; its first run compiles and is timed apart as
`compile s`). Same model, prompt and random seed, so all three should produce the same tokens (`same tokens`).
Random weights: speed does not depend on what the model has learned. At batch 1 and 8, each with two lengths:
`sample_tokens` new tokens from a 1-token prompt as asked, and, when that runs past block_size, the longest
generation that fits in the context, where the cache is never rebuilt (see generate.stream).

HellaSwag (`--what hellaswag`, not part of 'all'): milliseconds per multiple-choice example, scored as
hellaswag.py does (the context once into a KV cache, the four endings after it: hellaswag.ending_log_probs)
against its plain reference (one padded row per ending), alternating, on random examples of hs_context tokens
with four endings of hs_ending tokens; and the whole validation set's 10,042 examples at that rate.

Tokenizer (`--what tokenizer`, not part of 'all'; needs `pip install tokenizers`, the Rust trainer it is
compared with): training time of tokenizer.BPETokenizer against HuggingFace `tokenizers` on the same text with
the same split pattern and vocabulary size, on Tiny Shakespeare (vocab 4,096) and on a ~20 MB English corpus
built from this machine's man pages and GNU info manuals (vocab 32,768; its size and sha256 are printed so runs
can be compared). Every training runs in a fresh process, so its peak memory (max RSS) is its own. Then
encoding speed: the pure-Python encoder (chunk cache warm, and cold) against tiktoken on the same vocabulary,
one thread each.
"""

import concurrent.futures
import glob
import gzip
import hashlib
import importlib.util
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import torch

import heads
from common import UserError, main_guard
from configurator import configure
from data import read_meta
from generate import generate
from metrics import flops_per_token, peak_flops, peak_memory_mb
from model import GPT, GPTConfig, HEADS, allow_tf32, autocast, pick_device, pick_dtype
from prepare_data import bundled_shakespeare
from tokenizer import BPETokenizer
from train import TrainConfig, check, make_optimizer, model_config


@dataclass
class BenchConfig(TrainConfig):  # every train setting (so train configs work here), plus:
    what: Literal["train", "sample", "all", "grid", "tokenizer", "heads", "hellaswag"] = "all"  # all: train, sample
    vocab_size: int = 0  # random tokens of this vocabulary; 0: the config's data's (data/<dataset>/meta.json)
    bench_iters: int = 10  # timed training steps
    warmup: int = 2  # untimed steps first (allocator, caches, compile)
    sample_tokens: int = 500
    repeats: int = 3
    json: bool = False
    threads: int = 0  # heads: torch threads in the measuring process (0: torch's default)
    formulas: bool = False  # heads: also time sigmoid and bayes as heads.py's plain formulas
    text_file: str = ""  # tokenizer: a text to time encoding on ('': the bundled Tiny Shakespeare)
    corpus_mb: int = 20  # tokenizer: size of the man-page corpus
    big_vocab: int = 32768  # tokenizer: vocabulary trained on it
    hs_context: int = 60  # hellaswag: context tokens; 60 + 4 x 16 is about the validation set's mean size
    hs_ending: int = 16  # hellaswag: tokens of each of the four endings (docs/hellaswag.md)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(cfg, device):
    """The config's model with random weights (seeded: both benchmarks see the same model), shaped as train.py
    would make it on this device (a padded vocabulary on a GPU)."""
    torch.manual_seed(cfg.seed)
    return GPT(model_config(cfg, cfg.vocab_size, device)).to(device)


def vocab_of(cfg):
    """--vocab_size, or the vocabulary of the config's prepared data: a GPT-2 config benchmarks 50,257 outputs,
    not a character vocabulary (the output layer is a quarter of GPT-2's step)."""
    if cfg.vocab_size:
        return cfg.vocab_size
    folder = os.path.join(cfg.data_dir, cfg.dataset)
    if not os.path.isfile(os.path.join(folder, "meta.json")):
        raise UserError(f"no vocabulary to benchmark: no {folder}/meta.json; prepare the data or pass --vocab_size "
                        f"(50257 for GPT-2's tokens)")
    return read_meta(folder)["vocab_size"]


def bench_train(cfg, device, dtype, ctx):
    model = build(cfg, device)
    opts = make_optimizer(model, cfg, device)
    fwd = torch.compile(model) if cfg.compile else model
    x = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(cfg.warmup + cfg.bench_iters):
        sync(device)
        t = time.perf_counter()
        for _ in range(cfg.gradient_accumulation_steps):
            with ctx:
                _, loss = fwd(x, x.roll(-1, dims=1))
            (loss / cfg.gradient_accumulation_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    peak = peak_flops(device, dtype)
    mfu = flops_per_token(model, cfg.block_size) * tokens / dt / peak if peak else None
    return {"params_M": model.num_params() / 1e6, "ms_per_iter": dt * 1000, "tokens_per_iter": tokens,
            "tokens_per_s": tokens / dt, "mfu": mfu, "peak_tflops": peak / 1e12 if peak else None,
            "peak_mem_mb": peak_memory_mb(device)}


def bench_sample(cfg, device, ctx):
    """Sampling tokens/s at batch 1 and 8: without the cache, with it, and with the compiled decode step (its
    compile timed apart, in a first run), the same tokens from each (see the module's docstring)."""
    model = build(cfg, device).eval()
    lengths = [cfg.sample_tokens]
    if cfg.sample_tokens + 1 > cfg.block_size:
        lengths.append(cfg.block_size - 1)  # the longest generation that stays inside the context
    ways = {"uncached": dict(use_cache=False), "cached": {}, "compiled": dict(compile=True)}
    rows = []
    for batch in (1, 8):
        prompt = torch.zeros((batch, 1), dtype=torch.long, device=device)
        for n in lengths:
            row, outs = {"batch": batch, "new_tokens": n, "block_size": cfg.block_size}, {}
            for way, kw in ways.items():
                times = []
                for _ in range(cfg.repeats + (way == "compiled")):  # the compiled path's first run compiles
                    torch.manual_seed(cfg.seed)
                    sync(device)
                    t = time.perf_counter()
                    with ctx:
                        outs[way] = generate(model, prompt, n, **kw)
                    sync(device)
                    times.append(time.perf_counter() - t)
                if way == "compiled":
                    row["compile_s"] = times.pop(0)
                row[f"{way}_tok_s"] = batch * n / statistics.median(times)
            row["same_tokens"] = all(torch.equal(outs["cached"], o) for o in outs.values())
            rows.append(row)
    return rows


def bench_hellaswag(cfg, device, ctx):
    """ms per example: hellaswag.ending_log_probs against ending_log_probs_plain, alternating, on `repeats` x 5
    random examples (ending lengths hs_ending - 1 .. hs_ending + 2, as real endings differ)."""
    from hellaswag import ending_log_probs, ending_log_probs_plain
    model = build(cfg, device).eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    ids = lambda n: torch.randint(cfg.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    examples = [(ids(cfg.hs_context), [ids(cfg.hs_ending + d) for d in (-1, 0, 1, 2)]) for _ in range(cfg.repeats * 5)]
    times = {"cached": [], "plain": []}
    for k, (c, e) in enumerate([examples[0]] + examples):  # the first, untimed: allocator and caches
        for name, fn in (("cached", ending_log_probs), ("plain", ending_log_probs_plain)):
            sync(device)
            t = time.perf_counter()
            with ctx:
                fn(model, c, e)
            sync(device)
            if k:
                times[name].append(time.perf_counter() - t)
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    return {"context": cfg.hs_context, "ending": cfg.hs_ending, "cached_ms": ms["cached"], "plain_ms": ms["plain"],
            "speedup": ms["plain"] / ms["cached"], "full_set_min": ms["cached"] * 10042 / 60000}


# ---- output heads ----

def _vm(key):
    """This process's VmRSS or VmHWM (peak) in MB, from /proc (Linux); None elsewhere."""
    try:
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return None


def _head_loss(model, x, y, plain):
    """The training loss plus the head's regulariser (train.py divides it by the training tokens: the same
    cost as / 1e6); plain: written with heads.py's reference formulas instead of its fast Functions."""
    h = model.hidden(x).flatten(0, 1)
    z, zpad = model.outputs(h)  # as GPT.forward hands them over
    loss = model.head.loss(model, z, y.flatten(), h, plain=plain, zpad=zpad) / len(h)
    reg = model.head.regulariser(model, plain=plain)
    return loss if reg is None else loss + reg / 1e6


def _head_step(cfg, head):
    """Median fwd+bwd ms of one head, and the extra memory at its peak; run in a fresh process per head.
    head 'sigmoid-formula' / 'bayes-formula': that head's loss written as heads.py's reference formulas."""
    torch.set_num_threads(cfg.threads) if cfg.threads else None
    device = pick_device(cfg.device)
    allow_tf32(device)
    ctx = autocast(device, pick_dtype(cfg.dtype, device))  # the training dtype
    formula = head.endswith("-formula")
    cfg.head = head.removesuffix("-formula")
    model = build(cfg, device)
    x = torch.randint(cfg.vocab_size, (cfg.batch_size, cfg.block_size), device=device)
    y = x.roll(-1, dims=1)
    for p in model.parameters():  # gradients allocated before measuring: they are the same for every head
        p.grad = torch.zeros_like(p)
    base = torch.cuda.memory_allocated(device) if device.startswith("cuda") else _vm("VmRSS")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(cfg.warmup + cfg.bench_iters):
        sync(device)
        t = time.perf_counter()
        with ctx:
            loss = _head_loss(model, x, y, formula)
        loss.backward()
        sync(device)
        if i >= cfg.warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else _vm("VmHWM"))
    extra = None if base is None or peak is None else (peak - base) * (1 if not device.startswith("cuda") else 2 ** -20)
    return statistics.median(times) * 1000, extra


def bench_heads(cfg):
    """fwd+bwd time and peak extra memory of each head, in fresh processes, as ratios to softmax."""
    spawn = multiprocessing.get_context("spawn")
    logits_mb = cfg.batch_size * cfg.block_size * cfg.vocab_size * 4 / 2 ** 20
    names = tuple(HEADS) + (tuple(f"{h}-formula" for h in HEADS if h != GPTConfig.head) if cfg.formulas else ())
    runs = {h: [] for h in names}
    for _ in range(cfg.repeats):  # interleaved, so a slow moment of the machine hits every head alike
        for head in names:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                runs[head].append(pool.submit(_head_step, cfg, head).result())
    rows = [{"head": h, "ms": statistics.median(ms for ms, _ in runs[h]),
             "extra_mb": max((mb for _, mb in runs[h] if mb is not None), default=None), "logits_mb": logits_mb}
            for h in names]
    for r in rows:
        r["time_ratio"] = r["ms"] / rows[0]["ms"]
        r["mem_ratio"] = r["extra_mb"] / rows[0]["extra_mb"] if r["extra_mb"] and rows[0]["extra_mb"] else None
    return rows


# ---- the grid: every head, eager and compiled ----

def _train_row(cfg, head, compile, fused=True):
    """bench_train for one head, eager or compiled; run in a fresh process. fused=False: the loss as a CPU
    computes it (heads.FUSED off), for an A/B of the fused loss on a GPU."""
    device = pick_device(cfg.device)
    allow_tf32(device)
    dtype = pick_dtype(cfg.dtype, device)
    cfg.head, cfg.compile = head, compile
    if not fused:
        heads.FUSED = ()
    name = head if fused else f"{head} (unfused)"
    return {"head": name, "compile": compile, **bench_train(cfg, device, dtype, autocast(device, dtype))}


def bench_grid(cfg):
    """Training rows for every head, eager and compiled (on a GPU also softmax and bayes eager without the fused
    loss), each in a fresh process, then sampling (the softmax model) without the KV cache, with it, and
    compiled."""
    spawn = multiprocessing.get_context("spawn")
    runs = [(head, compile, True) for compile in (False, True) for head in HEADS]
    if pick_device(cfg.device).split(":")[0] in heads.FUSED:  # and without the fused loss, eager
        runs += [(head, False, False) for head, cls in HEADS.items() if cls.fused]
    rows = []
    for run in runs:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            rows.append(pool.submit(_train_row, cfg, *run).result())
    for r in rows:
        base = next(s for s in rows if s["head"] == GPTConfig.head and s["compile"] == r["compile"])
        r["vs_softmax"] = r["ms_per_iter"] / base["ms_per_iter"]
    device = pick_device(cfg.device)
    cfg.head = GPTConfig.head
    return rows, bench_sample(cfg, device, autocast(device, pick_dtype(cfg.dtype, device)))


def print_grid(cfg, device, dtype, rows):
    tokens = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    print(f"training on {device}, {dtype}: {cfg.n_layer}L {cfg.n_embd}d {cfg.n_head}h, vocab {cfg.vocab_size:,}, "
          f"{tokens:,} tokens/iter; median of {cfg.bench_iters} steps after {cfg.warmup}\n")
    print("| head | compiled | ms/iter | vs softmax | tokens/s | MFU | peak memory (GB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] else "n/a"
        print(f"| {r['head']} | {'yes' if r['compile'] else 'no'} | {r['ms_per_iter']:.1f} | {r['vs_softmax']:.2f}x | "
              f"{r['tokens_per_s']:,.0f} | {mfu} | {r['peak_mem_mb'] / 1024:.1f} |")


# ---- tokenizer ----

def man_corpus(mb):
    """English text that every Debian-like machine has: man pages (roff markup stripped) and GNU info manuals,
    in sorted file order, cut to `mb` million bytes."""
    files = sorted(glob.glob("/usr/share/man/man[1-9]*/*.gz")) + sorted(glob.glob("/usr/share/info/*.gz"))
    roff = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\\(..|\\\*(\(..|.)|\\s[-+]?\d+|\\[&|^%]")
    parts, size = [], 0
    for f in files:
        try:
            text = gzip.open(f).read().decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        if "/man/" in f:  # drop roff requests (.TH, .SH, ...) and inline font/character escapes
            text = roff.sub("", "\n".join(l for l in text.split("\n") if not l.startswith((".", "'"))))
            text = text.replace("\\-", "-").replace("\\e", "\\")
        parts.append(text)
        size += len(text.encode())
        if size >= mb * 1_000_000:
            break
    return "\n".join(parts).encode()[:mb * 1_000_000].decode("utf-8", errors="ignore")


# One training run, as a script run in a fresh Python process (no torch imported: the peak memory is the
# tokenizer's own plus the text's). Prints [seconds, peak RSS of the process in MB, of its largest worker in MB].
TRAIN_ONCE = """
import json, resource, sys, time
from tokenizer import PATTERNS, BPETokenizer
which, path, vocab_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
text = open(path, encoding="utf-8").read()
t = time.perf_counter()
if which == "ours":
    BPETokenizer.train(text, vocab_size, pattern="gpt4", special_tokens=["<|endoftext|>"], progress=False)
else:  # the same job for HuggingFace tokenizers: gpt4 split, then bytes; vocab = bytes + merges + special
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERNS["gpt4"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert tok.get_vocab_size() == vocab_size
dt = time.perf_counter() - t
mb = 1 / 1024 if sys.platform != "darwin" else 1 / 1024 ** 2  # ru_maxrss is KiB on Linux, bytes on macOS
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mb
try:  # Linux: ru_maxrss survives exec (it would count bench.py's torch); VmHWM is this program's own peak
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
except OSError:
    pass
print(json.dumps([dt, peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * mb]))
"""


def _train_once(which, path, vocab_size):
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", TRAIN_ONCE, which, path, str(vocab_size)], cwd=here,
                       capture_output=True, text=True)
    if r.returncode:
        raise UserError(f"the {which} tokenizer training run failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.splitlines()[-1])


def bench_tokenizer(cfg):
    rivals = ["ours", "hf"] if importlib.util.find_spec("tokenizers") else ["ours"]
    if len(rivals) == 1:
        print("(HuggingFace tokenizers is not installed: `pip install tokenizers` to compare against it)",
              file=sys.stderr)
    if cfg.text_file:
        with open(cfg.text_file, encoding="utf-8") as f:
            shakespeare = f.read()
    else:
        shakespeare = bundled_shakespeare()
    corpus = man_corpus(cfg.corpus_mb)
    result = {"corpus_bytes": len(corpus.encode()), "corpus_sha256": hashlib.sha256(corpus.encode()).hexdigest(),
              "cores": os.cpu_count(), "repeats": cfg.repeats, "training": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text, vocab in [("tiny shakespeare", shakespeare, 4096), ("man+info corpus", corpus, cfg.big_vocab)]:
            path = os.path.join(tmp, "text.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            row = {"corpus": name, "mb": len(text.encode()) / 1e6, "vocab_size": vocab}
            for who in rivals:
                runs = []
                for _ in range(cfg.repeats):  # a fresh process per run: its peak memory is its own
                    runs.append(_train_once(who, path, vocab))
                row[f"{who}_s"] = statistics.median(r[0] for r in runs)
                row[f"{who}_peak_mb"] = max(r[1] for r in runs)
                row[f"{who}_workers_peak_mb"] = max(r[2] for r in runs)
            if "hf_s" in row:
                row["ratio"] = row["ours_s"] / row["hf_s"]
            result["training"].append(row)

    # encoding, one thread each, on the vocabulary trained on Tiny Shakespeare
    tok = BPETokenizer.train(shakespeare, 4096, progress=False)
    enc = tok.to_tiktoken()
    mb = len(shakespeare.encode()) / 1e6

    def speed(fn):
        times = []
        for _ in range(cfg.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return mb / statistics.median(times)

    cold = speed(lambda: (tok.cache.clear(), tok.encode_ordinary(shakespeare)))
    warm = speed(lambda: tok.encode_ordinary(shakespeare))
    fast = speed(lambda: enc.encode_ordinary(shakespeare))
    assert tok.encode_ordinary(shakespeare) == enc.encode_ordinary(shakespeare)
    result["encoding"] = {"mb": mb, "python_cold_mb_s": cold, "python_warm_mb_s": warm, "tiktoken_mb_s": fast,
                          "ratio": warm / fast}
    return result


def print_tokenizer(r):
    print(f"BPE training: median of {r['repeats']} runs, each in a fresh process; split pattern gpt4; "
          f"{r['cores']} cores")
    print(f"man+info corpus: {r['corpus_bytes']:,} bytes, sha256 {r['corpus_sha256'][:16]}")
    print("peak memory: max RSS of the training process (python + the text + training); ours also of its largest "
          "chunk-counting worker")
    print(f"  {'corpus':<18}{'MB':>6}{'vocab':>8}{'ours s':>9}{'HF s':>8}{'ours/HF':>9}"
          f"{'ours MB':>9}{'worker MB':>10}{'HF MB':>8}")
    for t in r["training"]:
        hf = f"{t['hf_s']:8.2f}{t['ratio']:8.2f}x" if "hf_s" in t else f"{'n/a':>8}{'':>9}"
        hf_peak = f"{t['hf_peak_mb']:8.0f}" if "hf_s" in t else ""
        print(f"  {t['corpus']:<18}{t['mb']:6.1f}{t['vocab_size']:8,}{t['ours_s']:9.2f}{hf}"
              f"{t['ours_peak_mb']:9.0f}{t['ours_workers_peak_mb']:10.0f}{hf_peak}")
    e = r["encoding"]
    print(f"\nencoding Tiny Shakespeare ({e['mb']:.1f} MB, vocab 4,096), one thread")
    print(f"  pure Python, warm chunk cache {e['python_warm_mb_s']:6.2f} MB/s  ({e['ratio']:.2f}x tiktoken)")
    print(f"  pure Python, cold chunk cache {e['python_cold_mb_s']:6.2f} MB/s")
    print(f"  to_tiktoken()                 {e['tiktoken_mb_s']:6.2f} MB/s")


def print_results(cfg, result):
    """The human-readable report of the train, sample, grid and hellaswag benchmarks."""
    print(f"device {result['device']}, {result['dtype']}, {result['threads']} threads, torch {result['torch']}")
    if cfg.what == "grid":
        print()
        print_grid(cfg, result["device"], result["dtype"], result["train"])
    elif "train" in result:
        r = result["train"]
        mfu = f"{r['mfu'] * 100:.1f}% of {r['peak_tflops']:.2f} TFLOP/s" if r["mfu"] else "n/a"
        print(f"\ntraining ({cfg.n_layer}L {cfg.n_embd}d {cfg.n_head}h, {r['params_M']:.2f}M params, "
              f"{cfg.batch_size}x{cfg.block_size}x{cfg.gradient_accumulation_steps} tokens/iter)")
        print(f"  {r['ms_per_iter']:9.1f} ms/iter  {r['tokens_per_s']:12,.0f} tokens/s  MFU {mfu}")
    if "sample" in result:
        print(f"\nsampling tokens/s (all rows together; block_size {cfg.block_size}, median of {cfg.repeats})")
        print(f"  {'batch':>5}  {'new tokens':>10}  {'no cache':>9}  {'KV cache':>9}  {'compiled':>9}  "
              f"{'compile s':>9}  same tokens")
        for r in result["sample"]:
            print(f"  {r['batch']:>5}  {r['new_tokens']:>10}  {r['uncached_tok_s']:>9.1f}  {r['cached_tok_s']:>9.1f}  "
                  f"{r['compiled_tok_s']:>9.1f}  {r['compile_s']:>9.1f}  {r['same_tokens']}")
    if "hellaswag" in result:
        r = result["hellaswag"]
        print(f"\nhellaswag ({cfg.n_layer}L {cfg.n_embd}d, vocab {cfg.vocab_size:,}; context {r['context']} tokens, "
              f"4 endings of ~{r['ending']}; median of {cfg.repeats * 5} examples)")
        print(f"  context cached {r['cached_ms']:.1f} ms/example, plain rows {r['plain_ms']:.1f} "
              f"({r['speedup']:.2f}x); 10,042 examples: {r['full_set_min']:.1f} min")


def main(argv=None):
    cfg = configure(BenchConfig, argv)
    check(cfg)  # train.py's, the model and data settings
    if min(cfg.bench_iters, cfg.repeats, cfg.sample_tokens, cfg.corpus_mb, cfg.hs_context) < 1 or cfg.hs_ending < 2 \
            or min(cfg.warmup, cfg.threads, cfg.vocab_size) < 0 or cfg.big_vocab < 257:
        raise UserError("bench_iters, repeats, sample_tokens, corpus_mb and hs_context must be at least 1, hs_ending "
                        "at least 2, warmup, threads and vocab_size >= 0, and big_vocab above 256")
    if cfg.what != "tokenizer":
        cfg.vocab_size = vocab_of(cfg)
    if cfg.objective == "mlm" and cfg.what in ("sample", "all"):
        raise UserError("a masked language model does not generate: use --what=train with objective='mlm'")
    if cfg.what == "heads":
        rows = bench_heads(cfg)
        if cfg.json:
            print(json.dumps(rows))
            return
        print(f"heads: {cfg.n_layer}L {cfg.n_embd}d, {cfg.batch_size}x{cfg.block_size} tokens, vocab {cfg.vocab_size:,}"
              f" (logits {rows[0]['logits_mb']:.0f} MB); forward+backward ms: median of {cfg.repeats} processes "
              f"x {cfg.bench_iters} steps; extra MB: peak memory above the model, its gradients and the batch")
        print(f"  {'head':<16}{'ms':>9}{'vs softmax':>12}{'extra MB':>10}{'vs softmax':>12}{'in logits':>11}")
        for r in rows:
            mem = (f"{r['extra_mb']:10.0f}{r['mem_ratio']:11.2f}x{r['extra_mb'] / r['logits_mb']:11.1f}"
                   if r["mem_ratio"] else f"{'n/a':>10}")
            print(f"  {r['head']:<16}{r['ms']:9.1f}{r['time_ratio']:11.2f}x{mem}")
        return
    if cfg.what == "tokenizer":
        r = bench_tokenizer(cfg)
        print(json.dumps(r)) if cfg.json else print_tokenizer(r)
        return
    device = pick_device(cfg.device)
    allow_tf32(device)
    dtype = pick_dtype(cfg.dtype, device)
    ctx = autocast(device, dtype)
    result = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
              "dtype": dtype, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if cfg.what == "grid":
        result["train"], result["sample"] = bench_grid(cfg)
    if cfg.what in ("train", "all"):
        result["train"] = bench_train(cfg, device, dtype, ctx)
    if cfg.what in ("sample", "all"):
        result["sample"] = bench_sample(cfg, device, ctx)
    if cfg.what == "hellaswag":
        result["hellaswag"] = bench_hellaswag(cfg, device, ctx)
    if cfg.json:
        print(json.dumps(result))
        return
    print_results(cfg, result)


if __name__ == "__main__":
    main_guard(main)
