"""
Multiple choice with a language model: HellaSwag (Zellers et al., 2019), scored completion style.

    python hellaswag.py --init_from=gpt2                  # OpenAI's GPT-2 124M; the data is downloaded once
    python hellaswag.py --out_dir=out-owt                 # a checkpoint trained here -> out-owt/hellaswag.json
    python hellaswag.py --init_from=gpt2 --max_examples=500 --device=cpu

Each example is a context and four endings, one of them what came next in the source (an ActivityNet caption or
a WikiHow article), three written to fool a model. A language model has no answer button: it scores each ending
by how likely it finds the ending's tokens after the context,

    log p(ending | context) = sum_i log p(e_i | context, e_1 .. e_{i-1})

and the ending it finds likeliest is its answer. Two ways to rank them:
- acc: by that sum. Every token adds a negative term, so the sum prefers short endings.
- acc_norm: by the mean per token, the sum divided by the ending's token count, which removes that bias.
The ending is scored as the text " " + ending after the context ("completion style", as llm.c scores it: OpenAI's
GPT-2 124M gets acc 0.2859 and acc_norm 0.2955 on the 10,042 validation examples; guessing gets 0.25).
lm-evaluation-harness builds its query differently and normalises by characters, so its figures differ
(docs/hellaswag.md, which also shows how to run it on a model exported from here).

Every head scores with its own normalised next-token distribution (model.head_log_probs: softmax, sigmoid's
sigma_j / sum sigma, bayes's average over weight draws), as evaluate.py and sample.py do.
"""

import hashlib
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass

import torch
from tqdm import tqdm

from checkpoint import load_model
from common import UserError, atomic_write, main_guard, show
from configurator import configure
from generate import KVCache
from model import Dtype, autocast, pick_device, pick_dtype
from tokenizer import from_spec

# the validation split as its authors publish it; the sha256 and size are those that HuggingFace datasets
# records for this URL, so a changed or truncated copy is refused rather than scored
URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
SHA256 = "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"
SIZE = 12_246_618  # bytes; 10,042 examples
CACHE = os.path.join("data", "hellaswag", "hellaswag_val.jsonl")


@dataclass
class HellaSwagConfig:
    out_dir: str = "out-shakespeare-char"  # where train.py wrote ckpt.pt; the result goes there too
    init_from: str = "resume"  # 'resume' (out_dir/ckpt.pt), or GPT-2: gpt2, gpt2-medium/-large/-xl, a HF folder
    data_file: str = ""  # HellaSwag's validation jsonl; empty: data/hellaswag/hellaswag_val.jsonl, downloaded
    # there once and checked against its sha256 (a file given here is read as it is)
    max_examples: int | None = None  # score the first N examples only; None: all of them
    out: str = ""  # the result as JSON (n, acc, acc_norm); empty: OUT_DIR/hellaswag.json, where OUT_DIR is
    # out_dir for a checkpoint and out-NAME for init_from=NAME (out-gpt2 for gpt2)
    seed: int = 1337  # bayes: its weight draws
    device: str = "auto"
    dtype: Dtype = "auto"


def check(cfg):
    if cfg.max_examples is not None and cfg.max_examples < 1 or cfg.seed < 0:
        raise UserError(f"max_examples must be at least 1 (or None for all) and seed >= 0, got {cfg.max_examples} "
                        f"and {cfg.seed}")


# --- the data -----------------------------------------------------------------------------------------------

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(path=CACHE):
    """The path of HellaSwag's validation file: downloaded to `path` the first time, then read from there, its
    sha256 checked either way."""
    if not os.path.isfile(path):
        print(f"downloading {URL} to {path}", file=sys.stderr)
        try:
            with urllib.request.urlopen(URL, timeout=60) as r:
                data = r.read(SIZE + 1)
        except OSError as e:
            raise UserError(f"could not download HellaSwag's validation set ({e}); offline? download {URL} on a "
                            f"machine with internet and put it at {path}, or pass it with --data_file") from None
        if hashlib.sha256(data).hexdigest() != SHA256:
            raise UserError(f"the file downloaded from {URL} is not HellaSwag's validation set (sha256 differs); "
                            f"nothing was written")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_write(path) as f:
            f.write(data)
    elif sha256(path) != SHA256:
        raise UserError(f"{path} is not HellaSwag's validation set (sha256 differs: a changed or partial copy); "
                        f"delete it to download it again, or pass your own file with --data_file")
    return path


def read_examples(path, limit=None):
    """[(context, [endings], label)] from a HellaSwag jsonl file (the first `limit` examples), each line checked
    by parse_example."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()][:limit]
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if not lines:
        raise UserError(f"{path} holds no examples")
    return [parse_example(line, f"{path}, line {n}") for n, line in lines]


def parse_example(line, where):
    """One JSON object with a non-empty string "ctx", a list of non-empty strings "endings", and "label", the
    index of the right ending (an integer, or its digits as a string, as HuggingFace's copy has it); anything
    else is refused, naming `where`."""
    try:
        ex = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not JSON ({e})") from None
    if not isinstance(ex, dict):
        raise UserError(f"{where}: expected a JSON object with ctx, endings and label")
    ctx, endings, label = ex.get("ctx"), ex.get("endings"), ex.get("label")
    if not isinstance(ctx, str) or not ctx:
        raise UserError(f"{where}: 'ctx' must be a non-empty string, got {ctx!r:.60}")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
        raise UserError(f"{where}: 'endings' must be a list of at least 2 non-empty strings")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if type(label) is not int or not 0 <= label < len(endings):
        raise UserError(f"{where}: 'label' must be an integer from 0 to {len(endings) - 1}, got {label!r}")
    return ctx, endings, label


# --- scoring: the plain way, then the fast one ----------------------------------------------------------------

def picked_sum(logp, y):
    """sum_t logp[i, t, y[i, t]] over the positions where y is not -1: (n_endings,), on the CPU."""
    picked = logp.gather(-1, y.clamp_min(0)[..., None]).squeeze(-1)  # (n_endings, T)
    return picked.masked_fill(y == -1, 0).sum(1).cpu()


@torch.no_grad()
def ending_log_probs_plain(model, ctx, endings):
    """The reference: log p(ending | context) summed over each ending's tokens, (n_endings,). One row per ending,
    context + ending (its last block_size + 1 tokens when longer, as lm-evaluation-harness cuts), padded on the
    right, which a causal model never looks at; model.log_probs at every position, the ending's read off."""
    bs = model.config.block_size
    rows = [(ctx + e)[-(bs + 1):] for e in endings]
    T = max(map(len, rows)) - 1
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), -1)  # -1: not an ending token
    for i, (row, e) in enumerate(zip(rows, endings)):
        x[i, :len(row) - 1] = torch.tensor(row[:-1])
        y[i, len(row) - 1 - len(e):len(row) - 1] = torch.tensor(e)
    dev = model.lm_head.weight.device
    return picked_sum(model.log_probs(x.to(dev)), y.to(dev))


@torch.no_grad()
def ending_log_probs(model, ctx, endings):
    """Same values as ending_log_probs_plain, for less work. The plain rows repeat the context once per ending;
    here it runs once, into a KV cache that the endings then continue as one batch of rows (generate.KVCache).
    And the output layer (for GPT-2 124M a third of the work at these lengths) runs only at the positions
    that predict an ending token. When the context must be cut to fit block_size, each row is cut differently:
    that case goes the plain way."""
    bs, n = model.config.block_size, max(map(len, endings))
    if len(ctx) + n > bs + 1:
        return ending_log_probs_plain(model, ctx, endings)
    dev = model.lm_head.weight.device
    cache = KVCache(model.config)
    h_ctx = model.hidden(torch.tensor([ctx], device=dev), cache)[:, -1:]  # (1, 1, C): predicts each first token
    cache.repeat(len(endings))
    x = torch.zeros(len(endings), n, dtype=torch.long)
    y = torch.full((len(endings), n), -1)
    for i, e in enumerate(endings):
        x[i, :len(e)], y[i, :len(e)] = torch.tensor(e), torch.tensor(e)
    h = h_ctx.expand(len(endings), 1, -1)
    if n > 1:  # the endings' own tokens, but the last, predict the tokens after them
        h = torch.cat([h, model.hidden(x[:, :-1].to(dev), cache)], dim=1)  # (n_endings, n, C)
    return picked_sum(model.head_log_probs(model.logits(h), h), y.to(dev))  # log-probs (n_endings, n, V)


def encode(tok, ctx, endings, k, block_size):
    """The ids of the context and of each ending with its leading space, or a UserError naming example k."""
    try:
        ids = tok.encode(ctx), [tok.encode(" " + e) for e in endings]
    except ValueError as e:  # a character tokenizer meets a character it never saw
        raise UserError(f"example {k}: this model's tokenizer cannot encode it ({e})") from None
    longest = max(map(len, ids[1]))
    if longest > block_size:
        raise UserError(f"example {k}: an ending of {longest} tokens does not fit the model's context of "
                        f"{block_size} (block_size)")
    return ids


def evaluate(model, tok, examples, ctx_manager, seed):
    """{n, acc, acc_norm} over the examples: how often the right ending has the largest summed log-probability,
    and the largest mean per token."""
    torch.manual_seed(seed)
    right = right_norm = 0
    bar = tqdm(examples, desc="hellaswag", unit="ex", file=sys.stderr, mininterval=2)
    for k, (ctx, endings, label) in enumerate(bar):
        ctx_ids, end_ids = encode(tok, ctx, endings, k, model.config.block_size)
        with ctx_manager:
            total = ending_log_probs(model, ctx_ids, end_ids)
        mean = total / torch.tensor([len(e) for e in end_ids])
        right += int(total.argmax()) == label
        right_norm += int(mean.argmax()) == label
        bar.set_postfix(acc=f"{right / (k + 1):.4f}", acc_norm=f"{right_norm / (k + 1):.4f}", refresh=False)
    return {"n": len(examples), "acc": right / len(examples), "acc_norm": right_norm / len(examples)}


def main(argv=None):
    cfg = configure(HellaSwagConfig, argv)
    check(cfg)
    print(show(cfg), file=sys.stderr)
    path = cfg.data_file or fetch()
    examples = read_examples(path, cfg.max_examples)
    device = pick_device(cfg.device)
    model, spec = load_model(cfg.init_from, cfg.out_dir, device)
    where = cfg.out_dir if cfg.init_from == "resume" else cfg.init_from
    if not model.config.causal:
        raise UserError(f"the model in {where} is a masked language model (objective='mlm'): it does not predict "
                        f"what comes next, which is what HellaSwag scores")
    try:
        tok = from_spec(spec)
    except (TypeError, ValueError, OSError) as e:
        raise UserError(f"the tokenizer of {where} is not usable ({e})") from None
    model.eval().to(device)
    t0 = time.time()
    r = evaluate(model, tok, examples, autocast(device, pick_dtype(cfg.dtype, device)), cfg.seed)
    r.update(seconds=round(time.time() - t0, 1), model=where, head=model.config.head, data_file=path)
    name = os.path.basename(os.path.normpath(cfg.init_from))
    out = cfg.out or os.path.join(cfg.out_dir if cfg.init_from == "resume" else f"out-{name}", "hellaswag.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with atomic_write(out, "w") as f:
        json.dump(r, f, indent=1)
    print(f"{r['n']} examples: acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f} (guessing: "
          f"{sum(1 / len(e) for _, e, _ in examples) / len(examples):.4f}); {where}, scored with the "
          f"{model.config.head} head's normalised log-probabilities, in {r['seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    main_guard(main)
