"""
Evaluate a checkpoint honestly: on the validation split, with the same tokens for every run and every head.

    python evaluate.py --out_dir=out-shakespeare-char           # -> out_dir/eval_val.json, reliability_val.png
    python evaluate.py --compare out-a out-b out-c              # a markdown table and overlaid plots

Every number comes from the model's *normalised* next-token distribution (model.log_probs), so softmax,
sigmoid and bayes heads are scored alike:
- NLL (nats per token) and perplexity exp(NLL); top-1 accuracy.
- Calibration of the top-1 confidence c = max_j p_j: does "90% sure" mean right 90% of the time?
  ECE = sum over bins of (tokens in bin / N) * |accuracy in bin - mean confidence in bin|, with 15 equal-width
  bins, and with 15 equal-mass bins (each holding N/15 tokens: less at the mercy of empty bins).
  Brier score = mean over tokens of sum_j (p_j - [j = y])^2. A reliability diagram (PNG).
- The same after temperature scaling: one temperature T, p ∝ p^(1/T), fitted to minimise NLL. It is the
  standard fix for miscalibration, so a head that claims better calibration must beat it, not raw softmax.
  T is fitted on one half of the tokens and applied to the other, both ways (2-fold), so no token is scored
  by a temperature fitted on it.
- sigmoid: also the raw BCE with the next token as the one right answer (what it trains on, unless trained on
  sets) and the mean of sum_j sigma(z_j) (1 = exactly one token predicted).
- bayes: NLL with 1, 10 and 32 weight draws, and entropy = expected entropy + mutual information.
- With set_k (on by itself for a run trained with sigmoid_targets='ngram'): the predicted set {j : q_j > 1/2}
  against the right answers of data.py's ngram targets (every token that followed the same set_k tokens in
  the train split, and the one that does follow): precision |P & S| / |P| and recall |P & S| / |S|, summed
  over tokens, the mean sizes of both sets, and how often the next token is in P. q_j is sigma(z_j) for the
  sigmoid head, which says "j is one of the right answers" for each j on its own; for softmax and bayes it can
  only be p_j, so at most one token is ever in P.

The tokens: the split cut into consecutive windows of block_size (every token predicted once, given the
tokens before it in its window), capped at max_tokens. Weight draws (bayes) come from a fixed seed.
A run trained with batching='lines' is scored on the pieces of the split's documents instead (data.py
line_pieces), in order, padded, with an attention mask. A masked language model (objective='mlm') is scored
on the tokens its masking chooses (15% of them by default, most shown to it as <mask>), masked once with the
fixed seed: the same tokens every run, whatever the batch size. Its accuracy is the masked-token accuracy, and
its perplexity exp(NLL) that of the masked-out tokens given everything else (not comparable to a causal
model's, which sees only the past).
"""

import json
import math
import os
import statistics
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import build_model, load_checkpoint
from configurator import UserError, atomic_write, configure, main_guard
from data import (MLM_TOKENS, DataConfig, check_ids, line_pieces, mask_tokens, mlm_setup, ngram_table, open_split,
                  piece_batch, target_sets)
from model import autocast, pick_device, pick_dtype

BINS = 15
TEMPERATURES = np.exp(np.linspace(math.log(0.25), math.log(4.0), 97))  # the grid T is fitted on


@dataclass
class EvalConfig:
    out_dir: str = "out-shakespeare-char"  # where train.py wrote ckpt.pt
    split: str = "val"
    data_dir: str = ""  # default: the one the checkpoint was trained from
    max_tokens: int = 0  # 0: the whole split
    batch_size: int = 16  # windows per forward pass
    bayes_sample_counts: str = "1,10,32"  # bayes: NLL for each number of weight draws
    set_k: int = -1  # set precision/recall against the train split's k-token contexts; -1: the run's ngram_k
    # if it trained with sigmoid_targets='ngram', else off; 0: off
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"


def windows(data, block_size, max_tokens):
    """Consecutive (x, y) windows over the split: x = tokens i..i+T-1, y = tokens i+1..i+T."""
    n = (len(data) - 1) // block_size
    if max_tokens:
        n = min(n, max(1, max_tokens // block_size))
    if n == 0:
        raise UserError(f"the split has {len(data)} tokens, fewer than block_size+1 ({block_size + 1})")
    x = torch.from_numpy(np.asarray(data[:n * block_size], dtype=np.int64)).view(n, block_size)
    y = torch.from_numpy(np.asarray(data[1:n * block_size + 1], dtype=np.int64)).view(n, block_size)
    return x, y


def eval_set(data, meta, tc, cfg, mlm):
    """The tokens to score, the same every run: x, y (N, T) and the attention mask (N, T), None for windows.
    tc: the run's DataConfig. mlm (objective='mlm'): x is masked once, as a whole, with cfg.seed."""
    am = None
    if tc.batching == "lines":
        pieces = line_pieces(data, meta, tc.objective, tc.block_size)
        if cfg.max_tokens:  # the first pieces, up to max_tokens tokens
            pieces = pieces[:max(1, np.searchsorted(np.cumsum(pieces[:, 1]), cfg.max_tokens, side="right"))]
        x, y, am = piece_batch(data, pieces, np.arange(len(pieces)), tc.objective, mlm["pad"] if mlm else 0)
    else:
        x, y = windows(data, tc.block_size, cfg.max_tokens)
    if mlm is not None:
        x, y = mask_tokens(x, am, torch.Generator().manual_seed(cfg.seed), mlm)
    return x, y, am


def batches(x, y, am, lo, hi, size):
    """Rows lo..hi of (x, y, am) in slices of `size`; with padding, each cut to its longest row (right padding:
    the columns after it hold padding only)."""
    for i in range(lo, hi, size):
        xb, yb, ab = x[i:min(i + size, hi)], y[i:min(i + size, hi)], None if am is None else am[i:min(i + size, hi)]
        if ab is not None:
            L = int(ab.sum(1).max())
            xb, yb, ab = xb[:, :L], yb[:, :L], ab[:, :L]
        yield xb, yb, ab


def ece(conf, correct, equal_mass=False):
    """Expected calibration error of confidences (N,) against 0/1 correctness (N,); also the bins."""
    order = np.argsort(conf, kind="stable") if equal_mass else None
    if equal_mass:
        groups = np.array_split(order, BINS)
    else:
        which = np.minimum((conf * BINS).astype(int), BINS - 1)
        groups = [np.flatnonzero(which == b) for b in range(BINS)]
    err, bins = 0.0, []
    for g in groups:
        if len(g):
            acc, c = float(correct[g].mean()), float(conf[g].mean())
            err += len(g) / len(conf) * abs(acc - c)
            bins.append({"confidence": c, "accuracy": acc, "count": int(len(g))})
    return err, bins


def scores(logp, y):
    """Per-token NLL, top-1 confidence, correctness and Brier score for log-probabilities (N, V)."""
    p = logp.exp()
    p_y = p.gather(-1, y[:, None]).squeeze(-1)
    conf, pred = p.max(-1)
    return {"nll": -logp.gather(-1, y[:, None]).squeeze(-1), "conf": conf, "correct": (pred == y).float(),
            "brier": p.square().sum(-1) - 2 * p_y + 1}


def summarise(parts):
    """The metrics from per-token tensors gathered over the whole evaluation."""
    t = {k: torch.cat([p[k] for p in parts]).double().numpy() for k in parts[0]}
    e, bins = ece(t["conf"], t["correct"])
    e_mass, _ = ece(t["conf"], t["correct"], equal_mass=True)
    nll = float(t["nll"].mean())
    return {"nll": nll, "ppl": math.exp(nll), "acc": float(t["correct"].mean()), "ece": e, "ece_mass": e_mass,
            "brier": float(t["brier"].mean()), "bins": bins}


@torch.no_grad()
def one_pass(model, x, y, am, cfg, ctx, device, temps=None):
    """Score every window (every target that is not -1). temps=None: the raw distribution, plus per fold the NLL
    under every temperature of the grid (to fit T). temps=(T0, T1): the distribution at the temperature fitted
    for each fold."""
    head, n = model.config.head, x.size(0)
    ignore = bool((y == -1).any())  # padding, or tokens the masking left alone: scored are only the others
    folds = ((0, n // 2), (n // 2, n))  # the two halves of the temperature fit
    nll_by_t = np.zeros((2, len(TEMPERATURES)))
    inv_t = torch.tensor(1 / TEMPERATURES, dtype=torch.float32, device=device)
    parts, sums = [], {"entropy": 0.0, "expected_entropy": 0.0, "mi": 0.0, "bce": 0.0, "sum_sigma": 0.0}
    torch.manual_seed(cfg.seed)  # the same weight draws (bayes) in every pass and every run
    bar = tqdm(total=n, desc="evaluating", unit="window", disable=n < 50 * cfg.batch_size, file=sys.stderr)
    for fold, (lo, hi) in enumerate(folds):
        for xb, yb, ab in batches(x, y, am, lo, hi, cfg.batch_size):
            xb, yb, ab = xb.to(device), yb.to(device), None if ab is None else ab.to(device)
            with ctx:
                h = model.hidden(xb, attention_mask=ab)
                logp, entropy, mi = model.predictive(h)
                if head == "sigmoid" and temps is None:
                    z = model.logits(h)
                    sums["bce"] += model.head_loss(z, yb, h).item() * (yb != -1).sum().item()
                    sums["sum_sigma"] += torch.sigmoid(z.float()).sum(-1)[yb != -1].sum().item()
            logp, yf, entropy, mi = logp.float().flatten(0, 1), yb.flatten(), entropy.flatten(), mi.flatten()
            if ignore:
                keep = yf != -1
                logp, yf, entropy, mi = logp[keep], yf[keep], entropy[keep], mi[keep]
            if temps is not None:  # p ∝ p^(1/T)
                logp = (logp / temps[fold]).log_softmax(-1)
            else:
                for j in range(0, len(TEMPERATURES), 8):  # NLL at 8 temperatures at a time
                    lp = (logp[None] * inv_t[j:j + 8, None, None]).log_softmax(-1)
                    nll_by_t[fold, j:j + 8] -= lp.gather(-1, yf[None, :, None].expand(len(lp), -1, 1)
                                                         ).sum((1, 2)).cpu().numpy()
                sums["entropy"] += entropy.sum().item()
                sums["expected_entropy"] += (entropy - mi).sum().item()
                sums["mi"] += mi.sum().item()
            parts.append({k: v.cpu() for k, v in scores(logp, yf).items()})
            bar.update(len(xb))
    bar.close()
    result = summarise(parts)
    if temps is None:
        tokens = (y != -1).sum().item()
        keep = {"entropy"} | ({"bce", "sum_sigma"} if head == "sigmoid" else set()) | (
            {"expected_entropy", "mi"} if head == "bayes" else set())
        result.update({k: sums[k] / tokens for k in keep})
        # each half is scored with the temperature fitted on the *other* half
        result["fit_T"] = [float(TEMPERATURES[np.argmin(nll_by_t[1])]), float(TEMPERATURES[np.argmin(nll_by_t[0])])]
    return result


def evaluate(model, x, y, cfg, ctx, device, am=None):
    raw = one_pass(model, x, y, am, cfg, ctx, device)
    temps = raw.pop("fit_T")
    scaled = one_pass(model, x, y, am, cfg, ctx, device, temps)
    return {"head": model.config.head, "tokens": (y != -1).sum().item(), **raw,
            "temperature_scaled": {"T": temps, **scaled}}


@torch.no_grad()
def bayes_nll_by_samples(model, x, y, am, cfg, ctx, device, counts):
    out = {}
    for s in counts:
        torch.manual_seed(cfg.seed)
        total = 0.0
        for xb, yb, ab in batches(x, y, am, 0, x.size(0), cfg.batch_size):
            xb, yb, ab = xb.to(device), yb.to(device), None if ab is None else ab.to(device)
            with ctx:
                h = model.hidden(xb, attention_mask=ab)
                logp, _ = model.bayes_predict(model.logits(h), h, samples=s)
            nll = -logp.float().gather(-1, yb.clamp_min(0)[..., None]).squeeze(-1)  # (B, T)
            total += nll[yb != -1].sum().item()
        out[str(s)] = total / (y != -1).sum().item()
    return out


@torch.no_grad()
def set_scores(model, x, data, table, k, cfg, ctx, device):
    """The predicted sets against the ngram targets' sets (see the top of this file), over the windows x of
    the split `data` (its target at row r, column t is data[r * T + t + 1])."""
    N, T = x.numel(), x.size(1)
    hits = predicted = right = next_in = 0
    torch.manual_seed(cfg.seed)  # bayes: the same weight draws every run
    for i in range(0, len(x), cfg.batch_size):
        xb = x[i:i + cfg.batch_size].to(device)
        pos = (i + np.arange(len(xb)))[:, None] * T + 1 + np.arange(T)
        rows, cols = (t.to(device) for t in target_sets(table, data, pos, k, model.config.vocab_size))
        with ctx:
            h = model.hidden(xb)
            if model.config.head == "sigmoid":
                q = torch.sigmoid(model.logits(h).float())
            else:
                q = model.predictive(h)[0].exp()
        pred = q.flatten(0, 1) > 0.5
        hits += pred[rows, cols].sum().item()
        predicted += pred.sum().item()
        right += len(rows)
        y = torch.from_numpy(np.asarray(data[pos.reshape(-1)], dtype=np.int64)).to(device)
        next_in += pred[torch.arange(len(y), device=device), y].sum().item()
    return {"set_k": k, "set_precision": hits / predicted if predicted else None, "set_recall": hits / right,
            "set_size": predicted / N, "right_set_size": right / N, "next_in_set": next_in / N}


def reliability_plot(named_bins, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for name, bins in named_bins:
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", ms=3, label=name)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def run(cfg):
    device = pick_device(cfg.device)
    try:
        ctx = autocast(device, pick_dtype(cfg.dtype, device))
    except ValueError as e:
        raise UserError(str(e)) from None
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), device)
    model = build_model(ckpt, cfg.out_dir)
    model.eval().to(device)
    tcfg = ckpt.get("config", {})
    tc = DataConfig(**{k: v for k, v in tcfg.items() if k in DataConfig.__dataclass_fields__})
    folder = os.path.join(cfg.data_dir or tcfg.get("data_dir", "data"), tcfg.get("dataset", ""))
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        data = open_split(folder, meta, cfg.split)  # its size and recorded largest id checked against meta.json
        check_ids(data, meta["vocab_size"], os.path.join(folder, f"{cfg.split}.bin"))  # what is scored, read anyway
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the {cfg.split} split in {folder}/ ({e}); pass --data_dir") from None
    mlm = mlm_setup(meta, tc)[1] if tc.objective == "mlm" else None
    vocab = meta["vocab_size"] + (len(MLM_TOKENS) if mlm else 0)  # mlm: <mask> and <pad> come on top
    if vocab != model.config.vocab_size:
        raise UserError(f"{folder} has vocab_size {meta['vocab_size']}, the model {model.config.vocab_size}")
    tc.block_size = model.config.block_size
    x, y, am = eval_set(data, meta, tc, cfg, mlm)
    result = evaluate(model, x, y, cfg, ctx, device, am)
    if model.config.head == "bayes":
        counts = [int(s) for s in cfg.bayes_sample_counts.split(",") if s.strip()]
        result["nll_by_samples"] = bayes_nll_by_samples(model, x, y, am, cfg, ctx, device, counts)
    k = cfg.set_k if cfg.set_k >= 0 else (tc.ngram_k if tc.sigmoid_targets == "ngram" else 0)
    if k:
        if am is not None or mlm:
            raise UserError("set_k scores next-token sets: for runs with objective='clm', batching='packed'")
        train_split = open_split(folder, meta, "train")
        result.update(set_scores(model, x, data, ngram_table(train_split, k, meta["vocab_size"]), k, cfg, ctx,
                                 device))
    result.update(out_dir=cfg.out_dir, split=cfg.split, iter=ckpt.get("iter_num"), seed=tcfg.get("seed"),
                  objective=tc.objective, batching=tc.batching,
                  targets=tc.sigmoid_targets if model.config.head == "sigmoid" else "next")
    if mlm:
        result["masking"] = {"seed": cfg.seed, "prob": tc.mlm_prob, "mask": tc.mlm_mask, "random": tc.mlm_random}
    path = os.path.join(cfg.out_dir, f"eval_{cfg.split}.json")
    with atomic_write(path, "w") as f:
        json.dump(result, f, indent=1)
    reliability_plot([("raw", result["bins"]), ("temperature-scaled", result["temperature_scaled"]["bins"])],
                     os.path.join(cfg.out_dir, f"reliability_{cfg.split}.png"))
    return result


def report(r):
    mlm = r.get("objective") == "mlm"
    print(f"{r['out_dir']} ({r['head']} head, {r['split']} split, {r['tokens']:,} {'masked ' if mlm else ''}tokens)")
    if mlm:
        print(f"  masked tokens: NLL {r['nll']:.4f} nats/token, perplexity {r['ppl']:.3f}, "
              f"accuracy {r['acc']:.4f} (masking seed {r['masking']['seed']})")
    else:
        print(f"  NLL {r['nll']:.4f} nats/token, perplexity {r['ppl']:.3f}, top-1 accuracy {r['acc']:.4f}")
    print(f"  ECE {r['ece']:.4f} (equal-mass {r['ece_mass']:.4f}), Brier {r['brier']:.4f}, entropy {r['entropy']:.3f}")
    t = r["temperature_scaled"]
    print(f"  temperature-scaled (T = {t['T'][0]:.3f} / {t['T'][1]:.3f}, cross-fitted): NLL {t['nll']:.4f}, "
          f"ECE {t['ece']:.4f} (equal-mass {t['ece_mass']:.4f}), Brier {t['brier']:.4f}")
    if r["head"] == "sigmoid":
        print(f"  raw BCE (the next token as the one right answer) {r['bce']:.4f} nats/token, "
              f"mean sum of sigmoids {r['sum_sigma']:.3f}")
    if "set_k" in r:
        p = "n/a (empty)" if r["set_precision"] is None else f"{r['set_precision']:.4f}"
        print(f"  sets (q > 1/2) against the train split's next tokens after {r['set_k']} tokens: precision {p}, "
              f"recall {r['set_recall']:.4f}; mean size {r['set_size']:.2f} predicted, {r['right_set_size']:.2f} "
              f"right; next token in the predicted set {r['next_in_set']:.4f}")
    if r["head"] == "bayes":
        by = ", ".join(f"{k} draws {v:.4f}" for k, v in r["nll_by_samples"].items())
        print(f"  NLL by weight draws: {by}; entropy {r['entropy']:.3f} = expected {r['expected_entropy']:.3f} "
              f"+ mutual information {r['mi']:.4f}")


# ---- comparing runs ---------------------------------------------------------------------------------------

METRICS = [("nll", "NLL"), ("ppl", "ppl"), ("acc", "top-1"), ("ece", "ECE"), ("ece_mass", "ECE (mass)"),
           ("brier", "Brier"), ("t_nll", "NLL, T-scaled"), ("t_ece", "ECE, T-scaled"),
           ("set_precision", "set P"), ("set_recall", "set R"), ("set_size", "set size"),
           ("tokens_per_s", "train tok/s"), ("peak_mem_mb", "peak MB")]


def load_run(out_dir):
    path = os.path.join(out_dir, "eval_val.json")
    if not os.path.isfile(path):
        raise UserError(f"no {path}; run `python evaluate.py --out_dir={out_dir}` first")
    with open(path) as f:
        r = json.load(f)
    r["t_nll"], r["t_ece"] = r["temperature_scaled"]["nll"], r["temperature_scaled"]["ece"]
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    steps = [s for s in rows if "tokens_per_s" in s][1:]  # the first logged step includes warm-up
    if steps:
        r["tokens_per_s"] = statistics.median(s["tokens_per_s"] for s in steps)
        r["peak_mem_mb"] = max(s.get("peak_mem_mb", float("nan")) for s in steps)
    r["curve"] = [(s["iter"], s["val_loss"]) for s in rows if "val_loss" in s]
    return r


def compare(dirs, out="compare"):
    """Runs with the same head (and targets) are seeds of one experiment: mean ± std over them."""
    runs = [load_run(d) for d in dirs]
    groups = {}
    for r in runs:
        r["name"] = r["head"] + (f" ({r['targets']} targets)" if r.get("targets", "next") != "next" else "")
        groups.setdefault(r["name"], []).append(r)
    print(f"| head | runs | {' | '.join(name for _, name in METRICS)} |")
    print("|" + " --- |" * (len(METRICS) + 2))
    for head, rs in groups.items():
        cells = []
        for key, _ in METRICS:
            vals = [r[key] for r in rs if r.get(key) is not None and r[key] == r[key]]  # not missing, not NaN
            if not vals:
                cells.append("n/a")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}")
        print(f"| {head} | {len(rs)} | {' | '.join(cells)} |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {h: f"C{i}" for i, h in enumerate(groups)}
    for r in runs:  # from the second evaluation on: the loss at init would squash the scale
        ax.plot(*zip(*r["curve"][1:]), color=colors[r["name"]], alpha=0.7,
                label=r["name"] if r is groups[r["name"]][0] else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("val NLL (nats/token)")
    ax.legend()
    fig.tight_layout()
    with atomic_write(f"{out}_val_loss.png") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    reliability_plot([(f"{h} ({rs[0]['out_dir']})", rs[0]["bins"]) for h, rs in groups.items()],
                     f"{out}_reliability.png")
    print(f"\nplots: {out}_val_loss.png, {out}_reliability.png", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--compare"]:
        if {"-h", "--help"} & set(argv):
            print("usage: python evaluate.py --compare OUT_DIR [OUT_DIR ...] [--out=PREFIX]\n\n"
                  "A markdown table of the runs' eval_val.json (mean ± std over seeds, grouped by head),\n"
                  "and PREFIX_val_loss.png, PREFIX_reliability.png (default PREFIX: compare).")
            return
        dirs = [a for a in argv[1:] if not a.startswith("-")]
        outs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--out=")]
        if not dirs:
            raise UserError("--compare needs the out_dirs of the runs to compare")
        compare(dirs, *outs[:1])
        return
    cfg = configure(EvalConfig, argv)
    report(run(cfg))


if __name__ == "__main__":
    main_guard(main)
