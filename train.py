"""
Train a GPT: one loop for a laptop CPU, one GPU, or many GPUs (or CPU processes) with torchrun.

    python train.py config/shakespeare_char.py
    python train.py config/shakespeare_char.py --max_iters=4000 --init_from=resume
    torchrun --standalone --nproc_per_node=8 train.py config/owt_gpt2.py

Reads data/<dataset>/{train,val}.bin (see prepare_data.py) and writes to out_dir:
- ckpt.pt: everything needed to continue or to sample (model, optimizer, configs, iteration, RNG states,
  tokenizer spec), loadable with torch.load(weights_only=True), written atomically at every evaluation
  (when val loss improved, or always with always_save_checkpoint) and at max_iters.
- metrics.jsonl: one JSON object a line: every log_interval iterations
  {iter, loss, lr, ms_per_iter, tokens_per_s, mfu, time_s, peak_mem_mb (, kl)}, and at every evaluation
  {iter, train_loss, val_loss, lr, time_s}.
- curves.png: train/val loss and learning rate against iterations, drawn at the end.

init_from='resume' continues exactly where the checkpoint left off: same batches, same dropout masks, same
learning rate, so N iterations + resume + N more equals 2N in one go (on CPU, bit for bit).
init_from=PATH/ckpt.pt starts a new run from that checkpoint's weights, with any output head (fine_tune_from);
init_from='gpt2' (or gpt2-medium/-large/-xl, or a HuggingFace GPT-2 folder) from OpenAI's GPT-2 weights.

Under torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK) every process holds a copy of the model (DDP), runs
gradient_accumulation_steps / WORLD_SIZE micro-steps on its own part of each step's batch, and the gradients
are averaged across processes before the optimizer step: the same update, on the same tokens, as one process
running all the micro-steps (tests/test_ddp.py checks that). Only rank 0 evaluates, logs and saves.

What is learned, and from what batches:
- objective='clm' (the default): the next token at every position, with causal attention (GPT).
  objective='mlm': a masked language model (BERT): bidirectional attention, 15% of the positions chosen, most
  of them replaced by <mask> (mask_tokens), the loss on the chosen ones only. <mask> and <pad> are appended
  to the data's tokenizer as special tokens (mlm_setup), so the model has 2 more ids than the data.
- batching='packed' (the default): windows of block_size tokens at random places of the token stream,
  documents run into each other. batching='lines': whole documents (a speech of Tiny Shakespeare, or the
  text between <|endoftext|> tokens; line_pieces), padded on the right to the longest of each batch and
  passed with an attention mask, so padding is never attended to and never a target. Works for both
  objectives (clm: fine-tuning on examples of their own length).
"""

import json
import math
import os
import pickle
import re
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import UserError, configure, fault_point, main_guard, show
from model import GPT, GPTConfig
from tokenizer import from_spec


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    init_from: str = "scratch"  # 'scratch', 'resume' (out_dir/ckpt.pt), a ckpt.pt to fine-tune, or 'gpt2'...
    eval_interval: int = 2000  # evaluate (and checkpoint) every this many iterations
    eval_iters: int = 200  # batches per split in each evaluation
    log_interval: int = 10
    always_save_checkpoint: bool = True  # False: checkpoint only when val loss improves
    # data
    dataset: str = "openwebtext"  # data/<dataset>/ written by prepare_data.py
    data_dir: str = "data"
    batch_size: int = 12  # sequences per micro-step
    block_size: int = 1024  # tokens per sequence (the context length)
    gradient_accumulation_steps: int = 40  # micro-steps per optimizer step, across all processes (DDP)
    objective: str = "clm"  # 'clm': the next token, causal attention (GPT); 'mlm': masked tokens, bidirectional
    batching: str = "packed"  # 'packed': random block_size windows of the stream; 'lines': whole documents, padded
    mlm_prob: float = 0.15  # mlm: each real position is chosen for the loss with this probability (BERT's 15%)
    mlm_mask: float = 0.8  # mlm: a chosen position becomes <mask> with this probability,
    mlm_random: float = 0.1  # ... a random token of the data's vocabulary with this one, else stays as it was
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"  # 'layernorm' or 'rmsnorm'; these five switches: GPT-2 by default, LLaMA's parts
    mlp: str = "gelu"  # 'gelu' or 'swiglu' (gated, 2/3 as wide for the same cost)
    mlp_multiple: int = 64  # swiglu: hidden width rounded up to a multiple of this
    pos: str = "learned"  # 'learned' (wpe) or 'rope' (rotary positions in attention)
    rope_theta: float = 10000.0  # rope: base of the rotation frequencies
    head: str = "softmax"  # 'softmax', 'sigmoid' (BCE) or 'bayes' (Gaussian output weights); see model.py
    bayes_prior_std: float = 1.0  # bayes: prior N(0, std^2) on each output weight
    bayes_init_std: float = 3e-3  # bayes: posterior std at init
    bayes_samples: int = 10  # bayes: weight draws averaged per prediction (evaluation, sampling)
    bayes_kl_weight: float = 1.0  # bayes: training loss = CE + bayes_kl_weight * KL / train_tokens
    sigmoid_targets: str = "next"  # sigmoid: 'next' (the next token) or 'ngram' (a set: see ngram_table)
    ngram_k: int = 4  # sigmoid_targets='ngram': the right answers are every token that followed the same k tokens
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the gradient's global norm to this (0: off)
    # learning rate schedule: linear warmup, then cosine decay to min_lr at lr_decay_iters
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # system
    device: str = "auto"  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' (bfloat16 on GPUs that have it, else float16 on cuda, else float32)
    compile: bool = False  # torch.compile the model (worth it on a GPU for long runs)
    seed: int = 1337


def model_config(cfg, vocab_size):
    """The GPTConfig a training config describes."""
    try:
        return GPTConfig(block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                         n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, norm=cfg.norm, mlp=cfg.mlp,
                         mlp_multiple=cfg.mlp_multiple, pos=cfg.pos, rope_theta=cfg.rope_theta, head=cfg.head,
                         bayes_prior_std=cfg.bayes_prior_std, bayes_init_std=cfg.bayes_init_std,
                         bayes_samples=cfg.bayes_samples, causal=cfg.objective == "clm")
    except ValueError as e:
        raise UserError(str(e)) from None


def check(cfg):
    """Refuse settings that cannot work, before any time is spent."""
    if os.path.isfile(os.path.join(cfg.init_from, "ckpt.pt")):  # a run folder of ours, not a HuggingFace one
        raise UserError(f"init_from={cfg.init_from} is a training run's folder: pass {cfg.init_from}/ckpt.pt to "
                        f"start a new run from its weights, or --out_dir={cfg.init_from} --init_from=resume to continue it")
    if not (cfg.init_from in ("scratch", "resume", *GPT.PRETRAINED) or os.path.exists(cfg.init_from)):
        raise UserError(f"init_from must be 'scratch', 'resume', a ckpt.pt file, {', '.join(GPT.PRETRAINED)} or a "
                        f"HuggingFace GPT-2 folder; {cfg.init_from!r} is none of these")
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval", "eval_iters",
                "log_interval", "n_layer", "n_head", "n_embd"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if not 0 <= cfg.dropout < 1 or cfg.max_iters < 0 or cfg.learning_rate <= 0:
        raise UserError("dropout must be in [0, 1), max_iters >= 0 and learning_rate > 0")
    for key, choices in (("objective", ("clm", "mlm")), ("batching", ("packed", "lines"))):
        if getattr(cfg, key) not in choices:
            raise UserError(f"unknown {key} {getattr(cfg, key)!r}; choose {' or '.join(choices)}")
    if not 0 < cfg.mlm_prob <= 1 or min(cfg.mlm_mask, cfg.mlm_random) < 0 or cfg.mlm_mask + cfg.mlm_random > 1:
        raise UserError("mlm_prob must be in (0, 1], and mlm_mask, mlm_random >= 0 with a sum of at most 1")
    if cfg.sigmoid_targets not in ("next", "ngram"):
        raise UserError(f"unknown sigmoid_targets {cfg.sigmoid_targets!r}; choose next or ngram")
    if cfg.sigmoid_targets == "ngram" and (cfg.head != "sigmoid" or cfg.objective != "clm"
                                           or cfg.batching != "packed" or cfg.ngram_k < 1):
        raise UserError("sigmoid_targets='ngram' needs head='sigmoid', objective='clm', batching='packed' and "
                        "ngram_k >= 1 (the other heads have one right answer per token)")
    if cfg.objective == "mlm" and (cfg.init_from in GPT.PRETRAINED or os.path.isdir(cfg.init_from)):
        raise UserError("GPT-2's weights are a causal model without <mask>; objective='mlm' starts from scratch "
                        "or from a checkpoint trained with objective='mlm'")


def pick_device(name):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def pick_dtype(name, device):
    if name == "auto":
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, not {name!r}")
    return name


def autocast(device, dtype):
    """Mixed precision for float16/bfloat16: matmuls in half precision, reductions and the loss in fp32."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


# --- data -------------------------------------------------------------------------------------------------

def load_data(cfg):
    """Memory-map train.bin and val.bin after checking them against meta.json; return (meta, splits)."""
    folder = os.path.join(cfg.data_dir, cfg.dataset)
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        known = {"shakespeare_char", "shakespeare", "openwebtext"}
        cmd = (f"python prepare_data.py {cfg.dataset}" if cfg.dataset in known
               else f"python prepare_data.py text --input YOUR_TEXT --name {cfg.dataset}")
        raise UserError(f"no prepared data in {folder}/; run `{cmd}` first")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        splits = {split: open_split(folder, meta, split) for split in ("train", "val")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the data in {folder}/ ({type(e).__name__}: {e}); rerun prepare_data.py")
    for split, data in splits.items():
        if len(data) <= cfg.block_size:
            raise UserError(f"{folder}/{split}.bin has {len(data)} tokens, fewer than block_size+1 "
                            f"({cfg.block_size + 1}): use more text or a smaller block_size")
    return meta, splits


def open_split(folder, meta, split):
    """Memory-map folder/split.bin, refusing one that does not match meta.json (train.py, evaluate.py)."""
    path = os.path.join(folder, f"{split}.bin")
    dtype = np.dtype(meta["dtype"])
    n = os.path.getsize(path) // dtype.itemsize
    if n != meta[f"{split}_tokens"]:
        raise UserError(f"{path} holds {n} tokens but meta.json says {meta[f'{split}_tokens']}: the "
                        f"files are from different runs; rerun prepare_data.py")
    data = np.memmap(path, dtype=dtype, mode="r")
    check_ids(data, meta["vocab_size"], path)
    return data


def check_ids(data, vocab_size, path, chunk=1 << 26):
    """Refuse a token file holding an id the vocabulary lacks (a corrupt file, or one from another tokenizer):
    it would index past the embedding table, a crash on CPU and a device-side assert on a GPU. One pass over
    the file, 64M tokens at a time, before any time is spent."""
    for i in range(0, len(data), chunk):
        top = int(data[i:i + chunk].max())
        if top >= vocab_size:
            at = i + int(np.argmax(np.asarray(data[i:i + chunk]) >= vocab_size))
            raise UserError(f"{path} holds token id {int(data[at])} at position {at}, but meta.json's vocab_size is "
                            f"{vocab_size}: the file is corrupt or from another tokenizer; rerun prepare_data.py")


def doc_ends(data, sep, chunk=1 << 24):
    """The index just past every occurrence of the token sequence `sep` in data: one comparison per token,
    chunk by chunk (a corpus of billions of tokens does not fit in memory as one boolean array)."""
    n, ends = len(sep), []
    for i in range(0, len(data), chunk):
        a = np.asarray(data[i:i + chunk + n - 1])  # n - 1 more: a separator across the chunk's end is found
        m = max(len(a) - n + 1, 0)  # the separator can start at a[:m]
        hit = a[:m] == sep[0]
        for k in range(1, n):  # ... and the rest of it follows
            hit &= a[k:m + k] == sep[k]
        ends.append(np.flatnonzero(hit) + i + n)
    return np.concatenate(ends)


def doc_pieces(data, sep, size, step):
    """(start, length) rows (N, 2): every document of data (each ends just past a separator, which it keeps)
    cut into consecutive pieces of at most `size` tokens, each starting `step` after the one before. Pieces of
    fewer than 2 tokens are left out: one token alone has nothing to predict it from, or to predict."""
    ends = doc_ends(data, sep)
    if not len(ends) or ends[-1] != len(data):
        ends = np.append(ends, len(data))  # the text after the last separator is a document too
    starts = np.concatenate(([0], ends[:-1]))
    n = 1 + np.maximum(0, -(-(ends - starts - size) // step))  # pieces per document: 1 + ceil((L - size) / step)
    first = np.cumsum(n) - n  # the index of each document's first piece
    s = np.repeat(starts, n) + step * (np.arange(n.sum()) - np.repeat(first, n))  # (N,) piece starts
    length = np.minimum(size, np.repeat(ends, n) - s)
    keep = length >= 2
    return np.stack([s[keep], length[keep]], 1).astype(np.int64)


def line_pieces(data, meta, objective, block_size):
    """batching='lines': the documents of a split as (start, length) rows (doc_pieces). A document ends with
    <|endoftext|> where the tokenizer has one (prepare_data.py writes one after every document), else with a
    blank line, the tokens of "\\n\\n" (a speech of Tiny Shakespeare); it keeps its separator, so a causal model
    learns to end one. A document longer than the context is cut into pieces that fit rather than truncated,
    so no text goes unused: mlm pieces of block_size tokens; clm pieces of block_size + 1 tokens overlapping by
    one, since a piece of L tokens makes L - 1 (input, next token) pairs: every token is predicted once."""
    try:
        tok = from_spec(meta["tokenizer"])
        sep = [tok.eot_token] if tok.eot_token is not None else tok.encode("\n\n")
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"batching='lines' needs the data's tokenizer to find where documents end ({e})") from None
    size = block_size + 1 if objective == "clm" else block_size
    return doc_pieces(data, sep, size, block_size)


def piece_batch(data, pieces, ix, objective, pad):
    """Rows ix of `pieces` as one batch, padded on the right to the longest: x, y (B, L) and real (B, L), true
    at tokens. clm: x = piece[:-1], y = piece[1:]; mlm: x = y = the piece (mask_tokens makes the targets).
    y is -1 at padding; the pad id in x never matters (padding is never attended to), clm uses 0."""
    rows = [np.asarray(data[s:s + n], dtype=np.int64) for s, n in pieces[ix]]
    cut = 1 if objective == "clm" else 0
    lengths = torch.tensor([len(r) - cut for r in rows])  # (B,)
    L = int(lengths.max())
    x = np.full((len(rows), L), pad, dtype=np.int64)
    y = np.full((len(rows), L), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        x[i, :len(r) - cut], y[i, :len(r) - cut] = r[:len(r) - cut], r[cut:]
    real = torch.arange(L)[None, :] < lengths[:, None]  # (B, L)
    return torch.from_numpy(x), torch.from_numpy(y), real


MLM_TOKENS = ("<mask>", "<pad>")


def mlm_setup(meta, cfg):
    """objective='mlm': (tokenizer spec, mlm). The spec is the data's with <mask> and <pad> appended to its
    special tokens. Every tokenizer kind here (char, bpe, tiktoken) numbers special tokens after all others,
    so they get the data's vocab_size n and n + 1, ids that no data token has: a <mask> in the input can only
    come from the masking. The model's vocabulary is n + 2, and the checkpoint stores this spec, so sample.py
    rebuilds a tokenizer that reads <mask>. mlm: the ids and the masking probabilities, for mask_tokens."""
    spec, n = meta["tokenizer"], meta["vocab_size"]
    have = list(spec.get("special_tokens", []))
    if set(MLM_TOKENS) & set(have):
        raise UserError(f"the data's tokenizer already has {' and '.join(sorted(set(MLM_TOKENS) & set(have)))}; "
                        f"objective='mlm' adds its own: prepare the data without them")
    mlm = {"mask": n, "pad": n + 1, "vocab": n, "prob": cfg.mlm_prob, "p_mask": cfg.mlm_mask,
           "p_random": cfg.mlm_random}
    return {**spec, "special_tokens": have + list(MLM_TOKENS)}, mlm


def mask_tokens(x, real, gen, mlm):
    """BERT's masking of token ids x (B, T), drawn from the generator gen: each real position (real (B, T),
    or None: all) is chosen with probability mlm['prob']; a chosen one becomes <mask> with probability
    p_mask, a random token of the data's vocabulary (never <mask> or <pad>) with p_random, else stays itself.
    Returns (input, targets): the original token at chosen positions, -1 elsewhere, so only they count.
    Why not <mask> everywhere: text the model is later used on has no <mask>, and inputs that may be wrong
    or right make it check every token it reads, not only the masked ones."""
    u, v = torch.rand(x.shape, generator=gen), torch.rand(x.shape, generator=gen)  # (B, T) each
    noise = torch.randint(mlm["vocab"], x.shape, generator=gen)  # (B, T)
    chosen = u < mlm["prob"] if real is None else (u < mlm["prob"]) & real
    y = torch.where(chosen, x, -1)
    x = torch.where(chosen & (v < mlm["p_mask"]), mlm["mask"], x)
    x = torch.where(chosen & (v >= mlm["p_mask"]) & (v < mlm["p_mask"] + mlm["p_random"]), noise, x)
    return x, y


def mask_seed(cfg, *keys):
    """The seed of one batch's masking, from the run's seed and the batch's place (step, micro-step): the
    masks are a function of where they are used, so a resumed run and every torchrun rank draw the same ones
    as one uninterrupted process, with no generator state to save or share."""
    return int(np.random.SeedSequence([cfg.seed, *keys]).generate_state(1)[0])


def to_device(t, device):
    """t on the device (None stays None); to a GPU through pinned memory, so that the copy runs asynchronously."""
    if t is None:
        return None
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def get_batch(data, cfg, ix, device, pieces=None, mlm=None, seed=0):
    """One micro-batch: x, y (B, T) and the attention mask (B, T), None when nothing is padded.
    ix: window starts, x = tokens [i, i+T) and y = the next tokens [i+1, i+T+1) (batching='packed'), or rows
    of `pieces` (batching='lines', piece_batch). With mlm (objective='mlm'), x is masked with the seed and y
    holds the masked-out tokens (mask_tokens)."""
    if pieces is None:
        x = torch.from_numpy(np.stack([data[i:i + cfg.block_size] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + cfg.block_size] for i in ix]).astype(np.int64))
        real = None
    else:
        x, y, real = piece_batch(data, pieces, ix, cfg.objective, mlm["pad"] if mlm else 0)
    if mlm is not None:
        x, y = mask_tokens(x, real, torch.Generator().manual_seed(seed), mlm)
    return to_device(x, device), to_device(y, device), to_device(real, device)


def batch_rows(data, pieces, cfg):
    """How many different rows a batch draws from: window starts, or pieces (batching='lines')."""
    return len(data) - cfg.block_size if pieces is None else len(pieces)


def count_tokens(rows, pieces, cfg):
    """Input tokens of a whole step (every rank's micro-steps) drawn as `rows`: batch * block for windows, the
    real ones for pieces (padding is not text; a clm piece of L tokens is L - 1 inputs)."""
    if pieces is None:
        return rows.numel() * cfg.block_size
    return int(pieces[rows.flatten().numpy(), 1].sum()) - (rows.numel() if cfg.objective == "clm" else 0)


# --- set-valued targets (sigmoid_targets='ngram') -----------------------------------------------------------
# The sigmoid head scores every token as its own yes/no, so it can be taught that several next tokens are
# right. Here the right answers after a context are every token that followed the same k tokens anywhere in
# the train split (always including the one that actually follows): what softmax, with one answer per
# position, cannot be trained on. The table is built in memory, for train splits up to NGRAM_MAX_TOKENS.

NGRAM_MAX_TOKENS = 200_000_000


def context_keys(data, pos, k, vocab_size):
    """One int64 per position p of `pos`: the k tokens data[p-k:p] as a number in base vocab_size; -1 where
    p < k (no k tokens before it)."""
    pos = np.asarray(pos, dtype=np.int64)
    key = np.zeros(pos.shape, dtype=np.int64)
    for i in range(k, 0, -1):
        key = key * vocab_size + np.asarray(data[np.maximum(pos - i, 0)], dtype=np.int64)
    return np.where(pos >= k, key, -1)


def ngram_table(data, k, vocab_size):
    """The set of next tokens of every k-token context of the train split `data`: (keys, offsets, members),
    the sorted context keys (context_keys), and for the context keys[c] the tokens members[offsets[c]:
    offsets[c + 1]] (sorted)."""
    if vocab_size ** k >= 2 ** 63:
        raise UserError(f"ngram_k={k} is too long for a {vocab_size}-token vocabulary (the context key would not "
                        f"fit in 64 bits): use ngram_k <= {int(63 * math.log(2) / math.log(vocab_size))}")
    if len(data) > NGRAM_MAX_TOKENS or len(data) <= k:
        raise UserError(f"sigmoid_targets='ngram' builds its table in memory from a train split of more than "
                        f"ngram_k and at most {NGRAM_MAX_TOKENS:,} tokens; this one has {len(data):,}")
    keys = context_keys(data, np.arange(k, len(data)), k, vocab_size)
    uniq, ctx = np.unique(keys, return_inverse=True)
    pairs = np.unique(ctx.reshape(-1) * vocab_size + np.asarray(data[k:], dtype=np.int64))  # (context, token)
    offsets = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs // vocab_size, minlength=len(uniq)), out=offsets[1:])
    return uniq, offsets, pairs % vocab_size


def target_sets(table, data, pos, k, vocab_size):
    """The right answers of the targets at positions `pos` (any shape) of a split `data`, as SigmoidBCE's
    (rows, cols) pairs, rows numbering the targets in pos's flattened order: its context's set from the
    table, and always the token that does follow (a validation context's set may lack it; one the train split
    never had is that token alone)."""
    keys_sorted, offsets, members = table
    pos = np.asarray(pos, dtype=np.int64).reshape(-1)
    key = context_keys(data, pos, k, vocab_size)
    c = np.searchsorted(keys_sorted, key).clip(max=len(keys_sorted) - 1)
    n = np.where(keys_sorted[c] == key, offsets[c + 1] - offsets[c], 0)  # set sizes (0: an unseen context)
    rows = np.repeat(np.arange(len(pos)), n)
    at = np.repeat(offsets[c] - (np.cumsum(n) - n), n) + np.arange(n.sum())  # members[offsets[c] + 0 .. n - 1]
    follows = np.arange(len(pos)) * vocab_size + np.asarray(data[pos], dtype=np.int64)
    pairs = np.unique(np.concatenate([rows * vocab_size + members[at], follows]))  # sorted, without repeats
    return torch.from_numpy(pairs // vocab_size), torch.from_numpy(pairs % vocab_size)


# --- optimisation -----------------------------------------------------------------------------------------

def get_lr(it, cfg):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model, cfg, device):
    """AdamW; weight decay only on weight matrices: biases and LayerNorm gains are not shrunk to 0, nor the
    bayes head's rho (sigma = softplus(rho); decaying rho would pull every sigma towards softplus(0) = 0.69)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.dim() >= 2 and n != "lm_rho"]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named if p.dim() < 2 or n == "lm_rho"], "weight_decay": 0.0}]
    fused = device.startswith("cuda")  # one kernel for the whole update instead of several per tensor
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


def peak_flops(device, dtype):
    """FLOP/s the hardware could do at best: a GPU's datasheet number, or on CPU a measured matmul."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        half = dtype != "float32"
        # dense (no sparsity) bf16/fp16 and fp32 peaks from the datasheets; the first key the name holds wins
        for key, (f16, f32) in {"H200": (989e12, 67e12), "H100 PCIe": (756e12, 51e12), "H100": (989e12, 67e12), "A100": (312e12, 19.5e12),
                                "L4": (121e12, 30e12), "A10": (125e12, 31e12), "4090": (165e12, 83e12),
                                "3090": (71e12, 36e12), "V100": (125e12, 15.7e12), "T4": (65e12, 8e12)}.items():
            if key in name:
                return f16 if half else f32
        return None
    if device != "cpu":
        return None
    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    g = torch.Generator().manual_seed(0)  # its own generator: the global RNG drives dropout (exact resume)
    a, b = (torch.randn(1024, 1024, generator=g).to(dt) for _ in range(2))
    a @ b
    times = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 1024 ** 3 / min(times)  # the fastest run: a ceiling, not an average of interruptions


def flops_per_token(model, block_size):
    """Training FLOPs per token: 6N for the weights (2 forward + 4 backward per parameter per token) plus
    attention's 12 * n_layer * n_embd * T (q.k and att.v, forward and backward), as in the PaLM paper."""
    c = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_embd * block_size


# --- checkpoints ------------------------------------------------------------------------------------------

def save_checkpoint(path, ckpt):
    """Write to a temp file, fsync, rename: a crash mid-write leaves the previous checkpoint intact, and so does
    a full disk or a read-only folder, which end the run with a message instead (the temp file removed)."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            fault_point("checkpoint")  # tests/test_faults.py kills the process here, mid-write
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise UserError(f"cannot write the checkpoint {path} ({e.strerror or e}); the previous one, if any, is "
                        f"untouched: free some space or choose another out_dir, then resume") from None


def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True: tensors and plain values only, so a checkpoint cannot run code."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train one first (python train.py config/...)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only met something that is not a tensor or a plain value
        what = re.search(r"Unsupported global: GLOBAL [\w.]+", str(e))
        raise UserError(f"{path} is not a readable checkpoint: it holds Python objects beyond tensors and plain "
                        f"values ({what.group(0) if what else 'UnpicklingError'}), and loading those could run "
                        f"code; refused") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{path} is not a readable checkpoint: truncated, or not a torch file "
                        f"({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or not {"model", "model_config", "tokenizer"} <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this project (no model/model_config/tokenizer)")
    return ckpt


def fine_tune_from(model, src, meta):
    """Start `model` from another checkpoint's weights: a new run (fresh optimizer, iteration 0), possibly with
    another head. Weights the two heads share carry over (the tied wte/lm_head matrix is the bayes head's mean);
    a head's own parameters that the source lacks keep their init (the sigmoid bias at -log(V-1), the bayes
    sigma at bayes_init_std)."""
    mine = asdict(model.config)
    theirs = {**asdict(GPTConfig()), **src["model_config"]}  # a checkpoint older than a switch has its default
    for k in ("causal", "block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias", "norm", "mlp",
              "mlp_multiple", "pos"):
        if theirs[k] != mine[k]:
            raise UserError(f"cannot fine-tune from that checkpoint: it has {k}={theirs[k]!r}, "
                            f"this config {mine[k]!r}")
    if src["tokenizer"] != meta["tokenizer"]:
        raise UserError("cannot fine-tune from that checkpoint: its tokenizer is not this data's tokenizer")
    own = model.state_dict()
    missing, _ = model.load_state_dict({k: v for k, v in src["model"].items() if k in own}, strict=False)
    dropped = sorted(set(src["model"]) - set(own))
    print(f"fine-tuning from a {src['model_config'].get('head', 'softmax')} checkpoint"
          + (f"; fresh: {', '.join(missing)}" if missing else "") + (f"; dropped: {', '.join(dropped)}" if dropped else ""))


def build_model(ckpt, where):
    """The model a checkpoint describes, with its weights, or a clear error if this code cannot hold it."""
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        return model
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"the checkpoint in {where} does not fit this code ({type(e).__name__}: "
                        f"{str(e)[:200]})") from None


def open_log(path, resume_at):
    """metrics.jsonl, to append to; its folder made. A new run (resume_at None) starts it afresh. A resumed one
    forgets what the interrupted run logged after the checkpoint (the evaluation at it stays), and a torn last
    line from a kill -9 mid-write; rewritten atomically, so a kill here leaves the old log. A folder that cannot
    be written is found now, not at the first checkpoint."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if resume_at is None and os.path.exists(path):
            os.remove(path)
        elif resume_at is not None and os.path.exists(path):
            keep = []
            for line in open(path):
                try:
                    r = json.loads(line)
                    if r["iter"] < resume_at or (r["iter"] == resume_at and "val_loss" in r):
                        keep.append(line.rstrip("\n") + "\n")
                except (ValueError, TypeError, KeyError):
                    continue  # a line torn by a kill, or not ours: not a record
            with open(path + ".tmp", "w") as f:
                f.writelines(keep)
            os.replace(path + ".tmp", path)
        return open(path, "a")
    except OSError as e:
        raise UserError(f"cannot write to {os.path.dirname(path) or '.'} ({e.strerror or e}): choose another "
                        f"out_dir") from None


def peak_memory_mb(device):
    """Peak memory so far: the GPU's allocated tensors on CUDA, else the process's max RSS (Python and torch
    included, ~300 MB of it before any tensor)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource  # not on Windows
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


@torch.no_grad()
def estimate_loss(model, splits, cfg, device, ctx, pieces=None, mlm=None):
    """Mean NLL of the normalised prediction (nats per token: the same measure for every head; for sigmoid it
    is not the BCE it trains on) over eval_iters batches per split; for mlm, of the masked-out tokens. The
    batches (and their masks) come from their own fixed seeds: every evaluation scores the same tokens (a fair
    curve) and the training batch stream is left untouched. The bayes head's weight draws come from a forked
    copy of the global RNG, so evaluating leaves the training RNG (dropout, the bayes loss's draws) where it
    was: a resumed run, which skips the evaluation it resumes at, then draws what the uninterrupted run drew."""
    model.eval()
    out = {}
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if device.startswith("cuda") else []):
        for split, data in splits.items():
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            p = (pieces or {}).get(split)
            losses = []
            for k in range(cfg.eval_iters):
                ix = torch.randint(batch_rows(data, p, cfg), (cfg.batch_size,), generator=gen).tolist()
                x, y, am = get_batch(data, cfg, ix, device, p, mlm, mask_seed(cfg, 1, k))
                with ctx:
                    logp = model.log_probs(x, am)
                losses.append(F.nll_loss(logp.flatten(0, 1), y.flatten(), ignore_index=-1).item())
            out[split] = sum(losses) / len(losses)
    model.train()
    return out


def plot_curves(metrics_path, png_path):
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(metrics_path)]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 1))
    ax1.plot([r["iter"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train (batch)")
    ax1.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)")
    ax1.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax1.set_ylabel("loss (nats/token)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot([r["iter"] for r in train], [r["lr"] for r in train])
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("iteration")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# --- the training loop ------------------------------------------------------------------------------------

def setup_ddp(cfg):
    """(rank, world_size, device). torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them, one process.
    GPUs talk over nccl, CPU processes over gloo. The micro-steps are split between the processes, so
    tokens per optimizer step stay what the config says."""
    device = pick_device(cfg.device)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if cfg.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of "
                        f"the number of processes ({world}): each runs an equal share of the micro-steps")
    if device.startswith("cuda"):
        device = f"cuda:{local}"  # one GPU per process, whatever the config named
        torch.cuda.set_device(device)
    elif device != "cpu":
        raise UserError(f"torchrun needs device cuda or cpu, not {device}")
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def from_gpt2(cfg, mconf, meta):
    """A model holding OpenAI's GPT-2 weights (init_from='gpt2', ... or a HuggingFace folder), with the config's
    head, dropout and block_size. The config must state the pretrained shape (n_layer, n_head, n_embd): that is
    what resuming this run is checked against, so the config file says what model it trains."""
    kw = {k: getattr(mconf, k) for k in ("block_size", "dropout", "head", "bayes_prior_std", "bayes_init_std",
                                         "bayes_samples")}
    try:
        model = GPT.from_pretrained(cfg.init_from, **kw)
    except (ImportError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    diff = [k for k, v in asdict(model.config).items() if getattr(mconf, k) != v]
    if diff:
        raise UserError(f"init_from={cfg.init_from} has " + ", ".join(f"{k}={getattr(model.config, k)!r}" for k in diff)
                        + "; the config says " + ", ".join(f"{k}={getattr(mconf, k)!r}" for k in diff)
                        + (": set the same in the config" if "vocab_size" not in diff else
                           " (vocab_size is the data's: prepare it with --tokenizer gpt2)"))
    tok = meta["tokenizer"]
    if cfg.init_from in GPT.PRETRAINED and (tok.get("kind"), tok.get("name")) != ("tiktoken", "gpt2"):
        raise UserError(f"{cfg.init_from} reads GPT-2's tokens; this data has a {tok.get('kind')} tokenizer: "
                        f"prepare it with --tokenizer gpt2")
    print(f"starting from {cfg.init_from}'s weights")
    return model


def setup_task(cfg, meta, splits):
    """What the objective and batching add to the token files: (tokenizer spec, the model's vocab_size, mlm
    (mlm_setup) or None, pieces: {split: document pieces} for batching='lines', else {})."""
    spec, vocab, mlm = meta["tokenizer"], meta["vocab_size"], None
    if cfg.objective == "mlm":
        spec, mlm = mlm_setup(meta, cfg)
        vocab += len(MLM_TOKENS)
    pieces = {}
    if cfg.batching == "lines":
        for split, data in splits.items():
            pieces[split] = line_pieces(data, meta, cfg.objective, cfg.block_size)
            if not len(pieces[split]):
                raise UserError(f"the {split} split has no document of 2 tokens or more for batching='lines'")
    return spec, vocab, mlm, pieces


def main(argv=None):
    t0 = time.time()
    cfg = configure(TrainConfig, argv)
    check(cfg)
    rank, world, device = setup_ddp(cfg)
    got_signal, restore_signals = catch_signals(world)
    try:
        train(cfg, rank, world, device, t0, got_signal)
    finally:
        restore_signals()
        if world > 1:
            dist.destroy_process_group()  # also on errors: no process left waiting on the others


def catch_signals(world):
    """Ctrl-C (SIGINT) and SIGTERM (a scheduler taking the machine back; torchrun passing either on) only
    note the signal in the returned dict; the loop acts on it at the next step boundary, where all ranks agree,
    and saves a checkpoint at that iteration. Saving inside the handler could catch the optimizer step or a
    collective half done. A second signal stops one process at once (KeyboardInterrupt, the checkpoint on
    disk intact); under torchrun it is ignored, since a terminal's Ctrl-C reaches each worker twice, from the
    terminal and from torchrun (which SIGKILLs workers still running 30 s later). Returns (dict, restore)."""
    got = {}

    def handler(signum, frame):
        if "signum" in got and world == 1:
            raise KeyboardInterrupt
        if "signum" not in got:
            got["signum"] = signum
            if world == 1:
                print(f"{signal.Signals(signum).name}: saving a checkpoint after this iteration, then stopping "
                      f"(again to stop at once)", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return got, lambda: [signal.signal(s, h) for s, h in old.items()]


def train(cfg, rank, world, device, t0, got_signal=None):
    master = rank == 0  # rank 0 alone prints, evaluates and writes files
    got_signal = {} if got_signal is None else got_signal  # catch_signals fills it in main()
    say = print if master else (lambda *a, **k: None)
    dtype = pick_dtype(cfg.dtype, device)
    say(show(cfg))
    torch.manual_seed(cfg.seed)  # the same on every rank: identical init (DDP also copies rank 0's weights)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # tf32 matmuls: ~8x faster than fp32 on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    ctx = autocast(device, dtype)

    meta, splits = load_data(cfg)
    spec, vocab, mlm, pieces = setup_task(cfg, meta, splits)
    table = None
    if cfg.sigmoid_targets == "ngram":
        table = ngram_table(splits["train"], cfg.ngram_k, vocab)
        say(f"ngram targets: {len(table[0]):,} contexts of {cfg.ngram_k} tokens, on average "
            f"{len(table[2]) / len(table[0]):.2f} next tokens each")
    mconf = model_config(cfg, vocab)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = None
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(ckpt_path, device)
        # a checkpoint older than a setting has that setting's default
        for k, v in {**asdict(GPTConfig()), **ckpt["model_config"]}.items():
            if getattr(mconf, k) != v:
                raise UserError(f"cannot resume: the checkpoint has {k}={v!r} but this config says "
                                f"{getattr(mconf, k)!r}")
    if cfg.init_from in GPT.PRETRAINED or os.path.isdir(cfg.init_from):
        model = from_gpt2(cfg, mconf, meta).to(device)
    else:
        model = GPT(mconf).to(device)
    if os.path.isfile(cfg.init_from):
        fine_tune_from(model, load_checkpoint(cfg.init_from, device), {**meta, "tokenizer": spec})
    say(f"model: {model.num_params() / 1e6:.2f}M parameters")
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))
    # The batch stream: one generator, seeded alike on every rank, draws the window starts (or document pieces)
    # of a whole step (all ranks' micro-steps); each rank takes its own rows. Ranks see different data, together
    # exactly what one process would, and the state to save for an exact resume is one generator's, whatever
    # world is. The masks of objective='mlm' need no state at all: each micro-step's come from its own seed.
    gen = torch.Generator().manual_seed(cfg.seed)
    if rank:
        torch.manual_seed(cfg.seed + rank)  # dropout masks differ between ranks (rank 0's = one process's)
    iter_num, best_val_loss, elapsed = 0, float("inf"), 0.0
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss, elapsed = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["elapsed"]
        rng = ckpt["rng"]
        gen.set_state(rng["batch"].cpu())  # RNG states are CPU tensors, whatever map_location did
        # dropout masks continue where they left off: each rank's own RNG, if the checkpoint has this many
        torch_states = rng["torch"] if isinstance(rng["torch"], list) else [rng["torch"]]
        cuda_states = rng["cuda"] if isinstance(rng["cuda"], list) else [rng["cuda"]]
        if len(torch_states) == world:
            torch.set_rng_state(torch_states[rank].cpu())
            if device.startswith("cuda") and cuda_states[rank] is not None:
                torch.cuda.set_rng_state(cuda_states[rank].cpu(), device)
        elif cfg.dropout > 0:
            say(f"note: the checkpoint was written by {len(torch_states)} processes, this run has {world}: "
                f"batches continue exactly, dropout masks from fresh seeds")
        say(f"resuming from {ckpt_path} at iter {iter_num}")
        del ckpt
    log = open_log(metrics_path, iter_num if cfg.init_from == "resume" else None) if master else None
    raw_model = model
    if cfg.compile:
        say("compiling the model (about a minute)...")
        model = torch.compile(model)
    eval_model = model  # rank 0 evaluates alone: not through DDP, whose forward may talk to the other ranks
    if world > 1:
        model = DDP(model, device_ids=[device] if device.startswith("cuda") else None)

    gas = cfg.gradient_accumulation_steps // world  # this rank's micro-steps per optimizer step
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    say(f"tokens per iteration: {cfg.batch_size} batch * {cfg.block_size} block * "
        f"{cfg.gradient_accumulation_steps} accum = {tokens_per_iter:,}"
        + (f" ({world} processes x {gas} micro-steps)" if world > 1 else "")
        + (" at most (batching='lines' pads a batch to its longest piece; tok/s counts real tokens)" if pieces else ""))
    peak = peak_flops(device, dtype)
    flops_per_tok = flops_per_token(raw_model, cfg.block_size)
    start = t0 - elapsed  # time_s counts from the start of the run, across resumes
    resumed_at = iter_num if cfg.init_from == "resume" else -1
    saved_at = resumed_at if resumed_at >= 0 else None  # the iteration ckpt.pt holds, for the messages
    step_time, step_count, step_tokens, loss_sum = 0.0, 0, 0, torch.zeros((), device=device)
    interrupted = False  # a signal arrived and every rank knows it: save and stop at the next iteration
    nan_at = os.environ.get("NANOGPT_TEST_NAN_AT")  # test hook (tests/test_faults.py): "ITER" or "ITER:RANK"

    def write(record):
        if master:
            try:
                log.write(json.dumps(record) + "\n")
                log.flush()
            except OSError as e:
                raise UserError(f"cannot write {metrics_path} ({e.strerror or e}); ckpt.pt holds iteration "
                                f"{saved_at}: free some space, then resume") from None

    def gather_rng():
        """Every rank's dropout RNG, for the checkpoint (a collective: all ranks take part)."""
        mine = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.startswith("cuda") else None)
        if world == 1:
            return [mine]
        states = [None] * world
        dist.all_gather_object(states, mine)
        return states

    def checkpoint(states):
        save_checkpoint(ckpt_path, {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "model_config": asdict(raw_model.config),
            "config": asdict(cfg), "iter_num": iter_num, "best_val_loss": best_val_loss,
            "elapsed": time.time() - start,
            "rng": {"batch": gen.get_state(), "torch": [s[0].cpu() for s in states],
                    "cuda": [None if s[1] is None else s[1].cpu() for s in states]},
            "tokenizer": spec, "version": 1})
        return iter_num

    while True:
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if (iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters) and iter_num != resumed_at:
            states = gather_rng()
            if master:
                losses = estimate_loss(eval_model, splits, cfg, device, ctx, pieces, mlm)
                t = time.time() - start
                say(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({t:.0f} s)")
                write({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                       "time_s": t})
                # never overwrite a good checkpoint with this. Rank 0 alone knows: under torchrun the others
                # are stopped by torchrun when it exits (the training step's check keeps them in step otherwise)
                if not all(map(math.isfinite, losses.values())):
                    raise UserError(f"the evaluated loss is not finite at iteration {iter_num}; not saved: "
                                    f"{ckpt_path} still holds iteration {saved_at}")
                improved = losses["val"] < best_val_loss
                best_val_loss = min(best_val_loss, losses["val"])
                if improved or cfg.always_save_checkpoint:
                    saved_at = checkpoint(states)
        if iter_num >= cfg.max_iters:
            break
        if interrupted:  # the iteration the signal arrived in is done: save here (the eval at it came first)
            states = gather_rng()
            if master and saved_at != iter_num:
                saved_at = checkpoint(states)
            say(f"stopped by {signal.Signals(got_signal['signum']).name} at iteration {iter_num}; {ckpt_path} "
                f"holds it: continue with --init_from=resume")
            if world > 1:
                dist.barrier()  # leave together, after rank 0 has written (see the end of train)
            sys.exit(128 + got_signal["signum"])  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

        t_step = time.time()
        # window starts (or pieces) for every micro-step of every rank; this rank's are rows rank*gas .. +gas-1
        starts = torch.randint(batch_rows(splits["train"], pieces.get("train"), cfg), (world * gas, cfg.batch_size),
                               generator=gen)
        step_tokens += count_tokens(starts, pieces.get("train"), cfg)
        for micro in range(gas):
            m = rank * gas + micro  # the micro-step's place in the whole step: its rows and its masking seed
            x, y, am = get_batch(splits["train"], cfg, starts[m].tolist(), device, pieces.get("train"), mlm,
                                 mask_seed(cfg, 0, iter_num, m))
            sets = None
            if table is not None:  # the targets' positions in the split: window start + 1 .. + block_size
                pos = starts[m].numpy()[:, None] + 1 + np.arange(cfg.block_size)
                sets = tuple(to_device(t, device) for t in target_sets(table, splits["train"], pos, cfg.ngram_k, vocab))
            # DDP averages gradients across ranks during backward; only the last micro-step needs it
            sync = nullcontext() if world == 1 or micro == gas - 1 else model.no_sync()
            with sync:
                with ctx:
                    _, loss = model(x, y, am, sets)
                    loss = loss / gas  # the sum over micro-steps (and DDP's mean over ranks) is the batch mean
                    if nan_at in (str(iter_num), f"{iter_num}:{rank}"):
                        loss = loss * float("nan")  # the test hook: as if this step's loss diverged
                loss_sum += loss.detach()
                if micro == 0 and cfg.head == "bayes":  # the KL term, once per step, logged apart from the loss
                    kl = raw_model.kl() * cfg.bayes_kl_weight / meta["train_tokens"]
                    loss = loss + kl
                scaler.scale(loss).backward()
        grad_ok = True
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            # an inf gradient under fp16 is the GradScaler's business (it skips the step and lowers the scale);
            # without it, the step would write inf/nan into the weights
            grad_ok = scaler.is_enabled() or torch.isfinite(norm)
        # Stop before the optimizer step can put nan into weights a later checkpoint would save. Every rank
        # must stop (or save, after a signal) at the same step, or the others would wait forever in the next
        # collective: one all-reduce of both flags, and one wait for the GPU per step.
        bad = ~(torch.isfinite(loss_sum) & grad_ok)
        if cfg.head == "bayes":
            bad |= ~torch.isfinite(kl.detach())
        flags = torch.stack([bad.float(), torch.tensor(float("signum" in got_signal), device=device)])
        if world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        diverged, interrupted = (bool(f) for f in flags.tolist())
        if diverged:
            if not master:
                sys.exit(2)  # rank 0 says why
            raise UserError(f"the loss (or its gradient) is not finite at iteration {iter_num}"
                            + (" on some process" if world > 1 else "") + ": stopped before the optimizer step; "
                            + (f"{ckpt_path} still holds iteration {saved_at}" if saved_at is not None else
                               "no checkpoint was written") + ". Try a lower learning_rate, or dtype=bfloat16")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)  # frees the gradients' memory until the next backward

        if iter_num % cfg.log_interval == 0:
            if world > 1:  # the loss of the whole step, not just rank 0's share
                dist.all_reduce(loss_sum)
                loss_sum /= world
            loss_value = loss_sum.item()  # .item() waits for the GPU: only once per log line
            step_time += time.time() - t_step
            step_count += 1
            dt, tps = step_time / step_count, step_tokens / max(step_time, 1e-9)
            mfu = flops_per_tok * tps / world / peak if peak else None  # FLOP/s per process over its peak
            say(f"iter {iter_num}: loss {loss_value:.4f}, {dt * 1000:.0f} ms/iter, "
                f"{tps:,.0f} tok/s" + (f", mfu {mfu * 100:.1f}%" if mfu else ""))
            write({"iter": iter_num, "loss": loss_value, "lr": lr, "ms_per_iter": dt * 1000,
                   "tokens_per_s": tps, "mfu": mfu, "time_s": time.time() - start,
                   "peak_mem_mb": peak_memory_mb(device)}
                  | ({"kl": kl.item()} if cfg.head == "bayes" else {}))
            step_time, step_count, step_tokens = 0.0, 0, 0
        else:
            step_time += time.time() - t_step
            step_count += 1
        loss_sum.zero_()
        iter_num += 1

    if master:
        log.close()
        try:
            plot_curves(metrics_path, os.path.join(cfg.out_dir, "curves.png"))
        except OSError as e:
            raise UserError(f"trained and saved, but cannot write curves.png ({e.strerror or e})") from None
        say(f"done: best val loss {best_val_loss:.4f}, {time.time() - start:.0f} s; checkpoint in {ckpt_path}")
    if world > 1:
        # the other ranks wait for rank 0's last evaluation and writes, so no process tears down its side of
        # the process group while a peer still uses it (seen as a rare abort at exit of a finished run)
        dist.barrier()


if __name__ == "__main__":
    main_guard(main)
