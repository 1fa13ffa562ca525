"""
Evaluate a checkpoint honestly: on the validation split, with the same tokens for every run and every head.

    python evaluate.py --out_dir=out-shakespeare-char           # -> out_dir/eval_val.json, reliability_val.png
    python evaluate.py --ensemble out-1 out-2 out-3 --out=ens   # several runs as one model -> ens/eval_val.json
    python evaluate.py --compare out-a out-b out-c ens          # a markdown table and overlaid plots

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
- A deep ensemble (--ensemble): the mean of several runs' probabilities, p = (1/M) sum_m p_m, scored like one
  model; its mutual information is H(p) - (1/M) sum_m H(p_m), the members' disagreement. It is the usual strong
  baseline for predictive uncertainty: a Bayesian head should beat it (or at least a temperature) to count.
- Unfamiliar text (shift): does the model know when text is unlike its training text? Two shifted versions of
  the split, made from its own text with the seed: the words of each line shuffled (same words, no syntax),
  and characters drawn independently from the text's character frequencies (no words). Each window of clean
  and of shifted text gets a score, its mean predictive entropy (and, for bayes and ensembles, its mean mutual
  information); AUROC = the chance that a shifted window scores higher than a clean one (0.5: blind, 1: every
  shifted window above every clean one).
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
import random
import statistics
import sys
import typing
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import build_model, load_checkpoint
from common import UserError, atomic_write, main_guard
from configurator import configure
from data import (MLM_TOKENS, check_ids, line_pieces, mask_tokens, mlm_setup, ngram_table, open_split, piece_batch,
                  read_meta, saved_config, target_sets)
from metrics import pyplot
from model import Dtype, GPTConfig, autocast, pick_device, pick_dtype
from tokenizer import from_spec

BINS = 15
TEMPERATURES = np.exp(np.linspace(math.log(0.25), math.log(4.0), 97))  # the grid T is fitted on


@dataclass
class EvalConfig:
    out_dir: str = "out-shakespeare-char"  # where train.py wrote ckpt.pt
    split: Literal["train", "val"] = "val"
    data_dir: str = ""  # default: the one the checkpoint was trained from
    max_tokens: int = 0  # 0: the whole split
    batch_size: int = 16  # windows per forward pass
    bayes_sample_counts: str = "1,10,32"  # bayes: NLL for each number of weight draws
    set_k: int = -1  # set precision/recall against the train split's k-token contexts; -1: the run's ngram_k
    # if it trained with sigmoid_targets='ngram', else off; 0: off
    shift: bool = True  # also score shifted text (see above; causal models on windows of text only)
    seed: int = 1337  # weight draws, masking and the shifted text
    device: str = "auto"
    dtype: Dtype = "auto"


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


def predict(models, xb, ab=None, yb=None):
    """log p (B, T, V), predictive entropy and mutual information (B, T) of one model (model.predictive), or of
    an ensemble: the mean of its members' probabilities, and the members' disagreement as its MI. Given
    targets yb, also one model's own scores (heads.py's scores: sums by name; {} for an ensemble)."""
    if len(models) == 1:
        m = models[0]
        h = m.hidden(xb, attention_mask=ab)
        z = m.logits(h)
        extra = {} if yb is None else m.head.scores(m, z.flatten(0, 1).float(), yb.flatten(), h.flatten(0, 1))
        return *m.head.predictive(m, z, h), extra
    logps = torch.stack([m.predictive(m.hidden(xb, attention_mask=ab))[0].float() for m in models])  # (M, B, T, V)
    logp = logps.logsumexp(0) - math.log(len(models))  # log of the mean probability
    entropy = -(logp.exp() * logp).sum(-1)
    each = -(logps.exp() * logps).sum(-1).mean(0)  # the members' mean entropy
    return logp, entropy, entropy - each, {}


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


def nll_at_temperatures(logp, y, inv_t, size=2 ** 25):
    """The summed NLL of targets y (N,) under log-probabilities logp (N, V) sharpened or flattened by each
    temperature, p ∝ p^(1/T), inv_t = 1/T (K,). Computed on K x rows x V <= size elements at a time (~128 MB in
    fp32): all at once would be K x N x V, ~30 GB for 97 temperatures of a 16 x 1024 batch at V = 50,257."""
    rows = max(1, size // (len(inv_t) * logp.size(-1)))
    total = torch.zeros(len(inv_t), dtype=torch.float64, device=logp.device)
    for i in range(0, len(y), rows):
        lp = (logp[None, i:i + rows] * inv_t[:, None, None]).log_softmax(-1)  # (K, rows, V)
        total -= lp.gather(-1, y[None, i:i + rows, None].expand(len(inv_t), -1, 1)).sum((1, 2)).double()
    return total.cpu().numpy()


def summarise(parts):
    """The metrics from per-token tensors gathered over the whole evaluation."""
    t = {k: torch.cat([p[k] for p in parts]).double().numpy() for k in parts[0]}
    e, bins = ece(t["conf"], t["correct"])
    e_mass, _ = ece(t["conf"], t["correct"], equal_mass=True)
    nll = float(t["nll"].mean())
    return {"nll": nll, "ppl": math.exp(nll), "acc": float(t["correct"].mean()), "ece": e, "ece_mass": e_mass,
            "brier": float(t["brier"].mean()), "bins": bins}


@torch.no_grad()
def one_pass(models, x, y, am, cfg, ctx, device, temps=None):
    """Score every window (every target that is not -1) with a model or an ensemble (a list of models).
    temps=None: the raw distribution, plus per fold the NLL under every temperature of the grid (to fit T).
    temps=(T0, T1): the distribution at the temperature fitted for each fold."""
    n = x.size(0)
    ignore = bool((y == -1).any())  # padding, or tokens the masking left alone: scored are only the others
    folds = ((0, n // 2), (n // 2, n))  # the two halves of the temperature fit
    nll_by_t = np.zeros((2, len(TEMPERATURES)))
    inv_t = torch.tensor(1 / TEMPERATURES, dtype=torch.float32, device=device)
    parts, sums = [], {"entropy": 0.0, "expected_entropy": 0.0, "mi": 0.0}
    torch.manual_seed(cfg.seed)  # the same weight draws (bayes) in every pass and every run
    bar = tqdm(total=n, desc="evaluating", unit="window", disable=n < 50 * cfg.batch_size, file=sys.stderr)
    for fold, (lo, hi) in enumerate(folds):
        for xb, yb, ab in batches(x, y, am, lo, hi, cfg.batch_size):
            xb, yb, ab = xb.to(device), yb.to(device), None if ab is None else ab.to(device)
            with ctx:
                logp, entropy, mi, extra = predict(models, xb, ab, yb if temps is None else None)
                for k, v in extra.items():  # what this head alone reports (sigmoid: its BCE)
                    sums[k] = sums.get(k, 0.0) + v
            logp, yf, entropy, mi = logp.float().flatten(0, 1), yb.flatten(), entropy.flatten(), mi.flatten()
            if ignore:
                keep = yf != -1
                logp, yf, entropy, mi = logp[keep], yf[keep], entropy[keep], mi[keep]
            if temps is not None:  # p ∝ p^(1/T)
                logp = (logp / temps[fold]).log_softmax(-1)
            else:
                nll_by_t[fold] += nll_at_temperatures(logp, yf, inv_t)
                sums["entropy"] += entropy.sum().item()
                sums["expected_entropy"] += (entropy - mi).sum().item()
                sums["mi"] += mi.sum().item()
            parts.append({k: v.cpu() for k, v in scores(logp, yf).items()})
            bar.update(len(xb))
    bar.close()
    result = summarise(parts)
    if temps is None:
        tokens = (y != -1).sum().item()
        keep = set(sums) - ({"expected_entropy", "mi"} if not draws(models) else set())
        result.update({k: sums[k] / tokens for k in keep})
        # each half is scored with the temperature fitted on the *other* half
        result["fit_T"] = [float(TEMPERATURES[np.argmin(nll_by_t[1])]), float(TEMPERATURES[np.argmin(nll_by_t[0])])]
    return result


def head_of(models):
    return models[0].config.head if len(models) == 1 else "ensemble"


def draws(models):
    """Whether the prediction averages several draws (a bayes head's weights, an ensemble's members), so its
    entropy splits into an expected entropy and a mutual information."""
    return len(models) > 1 or models[0].head.draws


def evaluate(models, x, y, cfg, ctx, device, am=None):
    """The scores of a model, or of an ensemble (a list of models), raw and temperature-scaled."""
    models = models if isinstance(models, list) else [models]
    raw = one_pass(models, x, y, am, cfg, ctx, device)
    temps = raw.pop("fit_T")
    scaled = one_pass(models, x, y, am, cfg, ctx, device, temps)
    return {"head": head_of(models), "tokens": (y != -1).sum().item(), **raw,
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
                logp = model.head_log_probs(model.logits(h), h, samples=s)
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
            q = model.head.in_set(model, model.logits(h), h)
        pred = q.flatten(0, 1) > 0.5
        hits += pred[rows, cols].sum().item()
        predicted += pred.sum().item()
        right += len(rows)
        y = torch.from_numpy(np.asarray(data[pos.reshape(-1)], dtype=np.int64)).to(device)
        next_in += pred[torch.arange(len(y), device=device), y].sum().item()
    return {"set_k": k, "set_precision": hits / predicted if predicted else None, "set_recall": hits / right,
            "set_size": predicted / N, "right_set_size": right / N, "next_in_set": next_in / N}


# ---- unfamiliar text --------------------------------------------------------------------------------------

def shuffle_words(text, rng):
    """Each line's words (split at spaces) in a random order: the same words and lines, the syntax gone."""
    lines = []
    for line in text.split("\n"):
        words = line.split(" ")
        rng.shuffle(words)
        lines.append(" ".join(words))
    return "\n".join(lines)


def unigram_chars(text, rng):
    """As many characters as the text, each drawn on its own with its frequency in the text: no words left."""
    chars = sorted(set(text))
    counts = [text.count(c) for c in chars]
    return "".join(rng.choices(chars, weights=counts, k=len(text)))


SHIFTS = {"words": shuffle_words, "unigram": unigram_chars}


def auroc(clean, shifted):
    """The area under the ROC curve of telling shifted from clean by a score: the chance that a shifted window
    scores higher than a clean one, ties counting half. The pairwise count, sum over pairs of [s > c] + [s = c]/2,
    done with a sorted array: for each shifted score, the clean ones below it and those equal to it."""
    c = np.sort(np.asarray(clean, dtype=np.float64))
    s = np.asarray(shifted, dtype=np.float64)
    below, upto = np.searchsorted(c, s, "left"), np.searchsorted(c, s, "right")
    return float((below + upto).sum() / 2 / (len(c) * len(s)))


@torch.no_grad()
def window_scores(models, x, cfg, ctx, device):
    """Per window of x (N, T): the mean predictive entropy and mean mutual information over its positions."""
    entropy, mi = [], []
    torch.manual_seed(cfg.seed)
    for i in range(0, len(x), cfg.batch_size):
        with ctx:
            _, e, m, _ = predict(models, x[i:i + cfg.batch_size].to(device))
        entropy.append(e.float().mean(-1).cpu())
        mi.append(m.float().mean(-1).cpu())
    return torch.cat(entropy).double().numpy(), torch.cat(mi).double().numpy()


def shift_scores(models, data, tok, x, cfg, ctx, device):
    """Clean windows x (the first N windows of the split `data`) against each shift of the same text, encoded
    again and cut into as many windows: the mean scores and their AUROCs; also the per-window scores."""
    N, T = x.shape
    text = tok.decode(np.asarray(data[:N * T + 1]).tolist())
    clean = window_scores(models, x, cfg, ctx, device)
    out, per_window = {}, {"clean": clean}
    for name, shift in SHIFTS.items():
        ids = np.asarray(tok.encode(shift(text, random.Random(cfg.seed))), dtype=np.int64)
        xs, _ = windows(ids, T, N * T)
        per_window[name] = window_scores(models, xs, cfg, ctx, device)
        out[name] = {"windows": len(xs), "entropy": float(per_window[name][0].mean()),
                     "auroc_entropy": auroc(clean[0], per_window[name][0])}
        if draws(models):
            out[name].update(mi=float(per_window[name][1].mean()), auroc_mi=auroc(clean[1], per_window[name][1]))
    out["clean"] = {"windows": N, "entropy": float(clean[0].mean()), "mi": float(clean[1].mean())}
    return out, per_window


def shift_plot(per_window, with_mi, path, title):
    """Histograms of the per-window scores, clean against each shift."""
    plt = pyplot()
    panels = [(0, "mean predictive entropy (nats)")] + ([(1, "mean mutual information (nats)")] if with_mi else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (k, label) in zip(axes[0], panels):
        values = np.concatenate([v[k] for v in per_window.values()])
        bins = np.linspace(values.min(), values.max(), 50)
        for name, v in per_window.items():
            ax.hist(v[k], bins=bins, alpha=0.5, label=name)
        ax.set_xlabel(label + " per window")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def reliability_plot(named_bins, path):
    plt = pyplot()
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


def check(cfg):
    """Refuse settings that cannot work, before anything is loaded."""
    if cfg.batch_size < 1 or cfg.max_tokens < 0 or cfg.set_k < -1 or cfg.seed < 0:
        raise UserError("batch_size must be at least 1, max_tokens and seed >= 0, and set_k >= -1")
    counts = cfg.bayes_sample_counts.replace(",", " ").split()
    if not all(c.isdigit() and int(c) > 0 for c in counts):
        raise UserError(f"bayes_sample_counts must be positive integers separated by commas, got "
                        f"{cfg.bayes_sample_counts!r}")


def read_split(folder, split):
    """(meta, the split's tokens) of the data in folder: meta.json checked (data.read_meta), the split's size and
    recorded largest id against it, then every id of what is scored."""
    if not os.path.isfile(os.path.join(folder, "meta.json")):
        raise UserError(f"no data in {folder}/ (no meta.json); pass --data_dir")
    meta = read_meta(folder)
    try:
        data = open_split(folder, meta, split)
        check_ids(data, meta["vocab_size"], os.path.join(folder, f"{split}.bin"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the {split} split in {folder}/ ({e}); pass --data_dir") from None
    return meta, data


def check_members(members, ckpts, models):
    """An ensemble's members must read the same tokens: the same data, objective, batching and shapes."""
    first, model = ckpts[0].get("config", {}), models[0]
    for d, c, m in zip(members, ckpts, models):
        theirs = c.get("config", {})
        for key in ("dataset", "objective", "batching"):
            if theirs.get(key) != first.get(key):
                raise UserError(f"{d} was trained with {key}={theirs.get(key)!r}, {members[0]} with "
                                f"{first.get(key)!r}: an ensemble's members must share their data")
        if (m.config.vocab_size, m.config.block_size) != (model.config.vocab_size, model.config.block_size):
            raise UserError(f"{d} and {members[0]} differ in vocab_size or block_size")


def run(cfg, members=None):
    """Evaluate out_dir's checkpoint, or with members (run folders) their ensemble, written to out_dir."""
    check(cfg)
    device = pick_device(cfg.device)
    ctx = autocast(device, pick_dtype(cfg.dtype, device))
    ckpts = [load_checkpoint(os.path.join(d, "ckpt.pt"), device) for d in members or [cfg.out_dir]]
    models = [build_model(c, d).eval().to(device) for c, d in zip(ckpts, members or [cfg.out_dir])]
    model, ckpt = models[0], ckpts[0]
    tcfg = ckpt.get("config", {})
    if members:
        check_members(members, ckpts, models)
    tc = saved_config(tcfg, os.path.join(members[0] if members else cfg.out_dir, "ckpt.pt"))
    folder = os.path.join(cfg.data_dir or tc.data_dir, tcfg.get("dataset", ""))
    meta, data = read_split(folder, cfg.split)
    mlm = mlm_setup(meta, tc)[1] if tc.objective == "mlm" else None
    vocab = meta["vocab_size"] + (len(MLM_TOKENS) if mlm else 0)  # mlm: <mask> and <pad> come on top
    if vocab != model.config.vocab_size:
        raise UserError(f"{folder} has vocab_size {meta['vocab_size']}, the model {model.config.vocab_size}")
    tc.block_size = model.config.block_size
    x, y, am = eval_set(data, meta, tc, cfg, mlm)
    result = evaluate(models, x, y, cfg, ctx, device, am)
    if members:
        result["members"] = [{"out_dir": d, "head": m.config.head, "seed": c.get("config", {}).get("seed"),
                              "iter": c.get("iter_num")} for d, c, m in zip(members, ckpts, models)]
    elif model.head.draws:
        counts = [int(s) for s in cfg.bayes_sample_counts.split(",") if s.strip()]
        result["nll_by_samples"] = bayes_nll_by_samples(model, x, y, am, cfg, ctx, device, counts)
    per_window = None
    if cfg.shift and am is None and not mlm:
        result["shift"], per_window = shift_scores(models, data, from_spec(meta["tokenizer"]), x, cfg, ctx, device)
    k = cfg.set_k if cfg.set_k >= 0 else (tc.ngram_k if tc.sigmoid_targets == "ngram" else 0)
    if k:
        if am is not None or mlm or members:
            raise UserError("set_k scores next-token sets: for one run with objective='clm', batching='packed'")
        train_split = open_split(folder, meta, "train")
        result.update(set_scores(model, x, data, ngram_table(train_split, k, meta["vocab_size"]), k, cfg, ctx,
                                 device))
    result.update(out_dir=cfg.out_dir, split=cfg.split, iter=None if members else ckpt.get("iter_num"),
                  seed=None if members else tcfg.get("seed"), objective=tc.objective, batching=tc.batching,
                  targets=tc.sigmoid_targets if model.head.sets and not members else "next")
    if mlm:
        result["masking"] = {"seed": cfg.seed, "prob": tc.mlm_prob, "mask": tc.mlm_mask, "random": tc.mlm_random}
    os.makedirs(cfg.out_dir, exist_ok=True)  # an ensemble's folder is new
    path = os.path.join(cfg.out_dir, f"eval_{cfg.split}.json")
    with atomic_write(path, "w") as f:
        json.dump(result, f, indent=1)
    reliability_plot([("raw", result["bins"]), ("temperature-scaled", result["temperature_scaled"]["bins"])],
                     os.path.join(cfg.out_dir, f"reliability_{cfg.split}.png"))
    if per_window:
        shift_plot(per_window, draws(models),
                   os.path.join(cfg.out_dir, f"shift_{cfg.split}.png"), f"{result['head']}: {cfg.out_dir}")
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
    if "bce" in r:
        print(f"  raw BCE (the next token as the one right answer) {r['bce']:.4f} nats/token, "
              f"mean sum of sigmoids {r['sum_sigma']:.3f}")
    if "set_k" in r:
        p = "n/a (empty)" if r["set_precision"] is None else f"{r['set_precision']:.4f}"
        print(f"  sets (q > 1/2) against the train split's next tokens after {r['set_k']} tokens: precision {p}, "
              f"recall {r['set_recall']:.4f}; mean size {r['set_size']:.2f} predicted, {r['right_set_size']:.2f} "
              f"right; next token in the predicted set {r['next_in_set']:.4f}")
    if "nll_by_samples" in r:
        by = ", ".join(f"{k} draws {v:.4f}" for k, v in r["nll_by_samples"].items())
        print(f"  NLL by weight draws: {by}")
    if "mi" in r:
        print(f"  entropy {r['entropy']:.3f} = expected {r['expected_entropy']:.3f} + mutual information {r['mi']:.4f}")
    if "members" in r:
        print(f"  ensemble of {len(r['members'])}: " + ", ".join(f"{m['out_dir']} ({m['head']})" for m in r["members"]))
    if "shift" in r:
        for name, v in r["shift"].items():
            if name != "clean":
                mi = f"; MI {v['mi']:.4f}, AUROC {v['auroc_mi']:.3f}" if "mi" in v else ""
                print(f"  shifted text ({name}, {v['windows']} windows): entropy {v['entropy']:.3f} against "
                      f"{r['shift']['clean']['entropy']:.3f} clean, AUROC {v['auroc_entropy']:.3f}{mi}")


# ---- comparing runs ---------------------------------------------------------------------------------------

METRICS = [("nll", "NLL"), ("ppl", "ppl"), ("acc", "top-1"), ("ece", "ECE"), ("ece_mass", "ECE (mass)"),
           ("brier", "Brier"), ("t_nll", "NLL, T-scaled"), ("t_ece", "ECE, T-scaled"),
           ("set_precision", "set P"), ("set_recall", "set R"), ("set_size", "set size"),
           ("nll_1", "NLL, 1 draw"), ("nll_32", "NLL, 32 draws"), ("entropy", "entropy"), ("mi", "MI"),
           ("auroc_words", "AUROC words, H"), ("auroc_mi_words", "AUROC words, MI"),
           ("auroc_unigram", "AUROC unigram, H"), ("auroc_mi_unigram", "AUROC unigram, MI"),
           ("tokens_per_s", "train tok/s"), ("peak_mem_mb", "peak MB")]
DEFAULT_METRICS = ("nll,ppl,acc,ece,ece_mass,brier,t_nll,t_ece,set_precision,set_recall,set_size,tokens_per_s,"
                   "peak_mem_mb")


def load_run(out_dir):
    path = os.path.join(out_dir, "eval_val.json")
    if not os.path.isfile(path):
        raise UserError(f"no {path}; run `python evaluate.py --out_dir={out_dir}` first")
    with open(path) as f:
        r = json.load(f)
    r["t_nll"], r["t_ece"] = r["temperature_scaled"]["nll"], r["temperature_scaled"]["ece"]
    r.update({f"nll_{k}": v for k, v in r.get("nll_by_samples", {}).items()})
    for name, v in r.get("shift", {}).items():
        r.update({f"auroc_{name}": v.get("auroc_entropy"), f"auroc_mi_{name}": v.get("auroc_mi")})
    log = os.path.join(out_dir, "metrics.jsonl")  # an ensemble, or a best/ folder, has none
    rows = [json.loads(line) for line in open(log)] if os.path.isfile(log) else []
    steps = [s for s in rows if "tokens_per_s" in s][1:]  # the first logged step includes warm-up
    if steps:
        r["tokens_per_s"] = statistics.median(s["tokens_per_s"] for s in steps)
        r["peak_mem_mb"] = max(s.get("peak_mem_mb", float("nan")) for s in steps)
    r["curve"] = [(s["iter"], s["val_loss"]) for s in rows if "val_loss" in s]
    return r


def apart(a, b):
    """Whether two groups' means differ by more than twice the larger of their standard deviations (a group of
    one run has none: the other's counts); None when neither has one."""
    stds = [statistics.stdev(v) for v in (a, b) if len(v) > 1]
    return abs(statistics.mean(a) - statistics.mean(b)) > 2 * max(stds) if stds else None


def compare(dirs, out="compare", metrics=DEFAULT_METRICS):
    """Runs with the same head (and targets) are seeds of one experiment: mean ± std over them. Each group is
    set against the first (softmax, when it is there): a * marks a mean more than twice the larger std away."""
    names = dict(METRICS)
    keys = [k.strip() for k in metrics.split(",") if k.strip()]
    unknown = [k for k in keys if k not in names]
    if unknown:
        raise UserError(f"unknown metric {', '.join(unknown)}; known: {', '.join(names)}")
    runs = [load_run(d) | {"dir": d} for d in dirs]  # as given here, not as evaluated (maybe elsewhere)
    groups = {}
    for r in runs:
        r["name"] = r["head"] + (f" ({r['targets']} targets)" if r.get("targets", "next") != "next" else "")
        if "members" in r:
            r["name"] = f"ensemble of {len(r['members'])} {'/'.join(sorted({m['head'] for m in r['members']}))}"
        groups.setdefault(r["name"], []).append(r)
    ref = groups.get(GPTConfig.head, next(iter(groups.values())))
    value = lambda rs, key: [r[key] for r in rs if r.get(key) is not None and r[key] == r[key]]  # not NaN
    print(f"| head | runs | {' | '.join(names[k] for k in keys)} |")
    print("|" + " --- |" * (len(keys) + 2))
    for head, rs in groups.items():
        cells = []
        for key in keys:
            vals, against = value(rs, key), value(ref, key)
            mark = " *" if rs is not ref and vals and against and apart(vals, against) else ""
            if not vals:
                cells.append("n/a")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4g}{mark}")
            else:
                cells.append(f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}{mark}")
        print(f"| {head} | {len(rs)} | {' | '.join(cells)} |")
    print(f"\n* : the mean differs from {ref[0]['name']}'s by more than twice the larger std over seeds")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {h: f"C{i}" for i, h in enumerate(groups)}
    for r in runs:  # from the second evaluation on: the loss at init would squash the scale
        if len(r["curve"]) > 1:
            ax.plot(*zip(*r["curve"][1:]), color=colors[r["name"]], alpha=0.7,
                    label=r["name"] if r is groups[r["name"]][0] else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("val NLL (nats/token)")
    ax.legend()
    fig.tight_layout()
    with atomic_write(f"{out}_val_loss.png") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    reliability_plot([(f"{h} ({rs[0]['dir']})", rs[0]["bins"]) for h, rs in groups.items()],
                     f"{out}_reliability.png")
    print(f"\nplots: {out}_val_loss.png, {out}_reliability.png", file=sys.stderr)


def split_args(args, keys, flags=()):
    """(positional arguments, options) of args, an option being `--key=value`, or `--key value` for a key in
    keys (a key in flags, a boolean, takes the next word only if it is True or False; alone it means True):
    ["a", "--out", "x", "b", "--shift"] -> (["a", "b"], ["--out", "x", "--shift"])."""
    pos, opts, i = [], [], 0
    while i < len(args):
        a, i = args[i], i + 1
        if not a.startswith("-"):
            pos.append(a)
            continue
        opts.append(a)
        key = a[2:]
        if a.startswith("--") and "=" not in a and key in keys and i < len(args) and (
                key not in flags or args[i] in ("True", "False")):
            opts.append(args[i])
            i += 1
    return pos, opts


def take(opts, key, default):
    """The value of --key in opts (`--key=value` or `--key value`), and opts without it."""
    value, rest, i = default, [], 0
    while i < len(opts):
        if opts[i] == f"--{key}" and i + 1 < len(opts):
            value, i = opts[i + 1], i + 2
        elif opts[i].startswith(f"--{key}="):
            value, i = opts[i].split("=", 1)[1], i + 1
        else:
            rest, i = rest + [opts[i]], i + 1
    return value, rest


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--ensemble"]:
        fields = typing.get_type_hints(EvalConfig)
        members, opts = split_args(argv[1:], {"out", *fields}, {k for k, t in fields.items() if t is bool})
        out, settings = take(opts, "out", "ensemble")
        if {"-h", "--help"} & set(argv):
            print("usage: python evaluate.py --ensemble OUT_DIR OUT_DIR [...] [--out=DIR] [settings as below]\n\n"
                  "Scores the mean of the runs' predictive probabilities like one model, into DIR/eval_val.json "
                  "(default DIR: ensemble).\n")
            configure(EvalConfig, ["--help"])
            return
        if len(members) < 2:
            raise UserError("--ensemble needs the out_dirs of at least 2 runs")
        cfg = configure(EvalConfig, settings + [f"--out_dir={out}"])
        report(run(cfg, members))
        return
    if argv[:1] == ["--compare"]:
        if {"-h", "--help"} & set(argv):
            print("usage: python evaluate.py --compare OUT_DIR [OUT_DIR ...] [--out=PREFIX] [--metrics=KEY,KEY...]\n\n"
                  "A markdown table of the runs' eval_val.json (mean ± std over seeds, grouped by head; * where a\n"
                  "group's mean is more than twice the larger std from softmax's), and PREFIX_val_loss.png,\n"
                  "PREFIX_reliability.png (default PREFIX: compare).\n\n"
                  f"metrics (default {DEFAULT_METRICS}):\n  " + ", ".join(f"{k} ({n})" for k, n in METRICS))
            return
        dirs, opts = split_args(argv[1:], {"out", "metrics"})
        out, opts = take(opts, "out", "compare")
        metrics, opts = take(opts, "metrics", DEFAULT_METRICS)
        if not dirs or opts:
            raise UserError("usage: python evaluate.py --compare OUT_DIR [OUT_DIR ...] [--out=PREFIX] [--metrics=...]")
        compare(dirs, out, metrics)
        return
    cfg = configure(EvalConfig, argv)
    report(run(cfg))


if __name__ == "__main__":
    main_guard(main)
