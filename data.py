"""
Token files to batches: everything between prepare_data.py's files and the model's input.

    load(cfg) -> Data: meta.json and the memory-mapped splits, checked; what the objective adds
    get_batch(d, split, rows, device, seed) -> Batch: x, y (B, T), the attention mask, the target sets

What is learned, from what batches (the settings are DataConfig's):
- objective='clm' (GPT): the next token at every position. objective='mlm' (BERT): 15% of the positions chosen,
  most of them replaced by <mask>, the loss on the chosen ones only; <mask> and <pad> are appended to the data's
  tokenizer, so the model has 2 more ids than the data (mlm_setup, mask_tokens).
- batching='packed': windows of block_size tokens at random places of the stream, documents run into each
  other. batching='lines': whole documents (line_pieces), padded on the right to the longest of each batch and
  passed with an attention mask, so padding is never attended to and never a target.
- sigmoid_targets='ngram': for the sigmoid head, a set of right answers per position (ngram_table).
- train_fraction, train_noise: less or noisier training text for studies of the heads (degrade); the
  validation split is never touched.
- split_by='windows': the leaky split a generic random split of overlapping windows makes (window_split), kept
  to show what it does to a validation loss; never for a real result.
"""

import json
import math
import os
from typing import Literal, get_type_hints
from dataclasses import dataclass, field

import numpy as np
import torch

from common import UserError
from configurator import check_value
from tokenizer import from_spec


@dataclass
class DataConfig:
    # data
    dataset: str = "openwebtext"  # data/<dataset>/ written by prepare_data.py
    data_dir: str = "data"
    batch_size: int = 12  # sequences per micro-step
    block_size: int = 1024  # tokens per sequence (the context length)
    objective: Literal["clm", "mlm"] = "clm"  # clm: the next token, causal (GPT); mlm: masked tokens, bidirectional
    batching: Literal["packed", "lines"] = "packed"  # packed: random windows of the stream; lines: documents, padded
    mlm_prob: float = 0.15  # mlm: each real position is chosen for the loss with this probability (BERT's 15%)
    mlm_mask: float = 0.8  # mlm: a chosen position becomes <mask> with this probability,
    mlm_random: float = 0.1  # ... a random token of the data's vocabulary with this one, else stays as it was
    sigmoid_targets: Literal["next", "ngram"] = "next"  # sigmoid head: the next token, or a set (see ngram_table)
    ngram_k: int = 4  # sigmoid_targets='ngram': the right answers are every token that followed the same k tokens
    train_fraction: float = 1.0  # train on the first this fraction of the train split only (little-data studies)
    train_noise: float = 0.0  # replace this fraction of the training tokens by random ids (fixed seed; val stays clean)
    split_by: Literal["text", "windows"] = "text"  # text: val is its own text; windows: leaky (window_split)


@dataclass
class Data:
    """A run's data: the token files and what the objective and batching add to them (load)."""
    cfg: DataConfig
    folder: str
    meta: dict  # meta.json
    splits: dict  # 'train', 'val' -> the tokens, memory-mapped
    spec: dict  # the tokenizer the model reads: the data's, plus <mask> and <pad> for objective='mlm'
    vocab_size: int  # the model's vocabulary
    mlm: dict | None = None  # objective='mlm': mask_tokens's ids and probabilities
    pieces: dict = field(default_factory=dict)  # batching='lines': split -> document pieces (N, 2)
    table: tuple | None = None  # sigmoid_targets='ngram': every context's next tokens (ngram_table)
    starts: dict = field(default_factory=dict)  # split_by='windows': split -> the window starts it may draw


def saved_config(saved, where):
    """The DataConfig that a checkpoint's training settings (a dict) describe, each field of its type."""
    hints = get_type_hints(DataConfig)
    try:
        return DataConfig(**{k: check_value(k, saved[k], hints[k]) for k in hints if k in saved})
    except UserError as e:
        raise UserError(f"{where}: the training settings' {e}") from None


def check(cfg, sets):
    """Refuse data settings that cannot work, before any time is spent; sets: whether the model's output head
    can train on a set of right answers per token (heads.py)."""
    if not 0 < cfg.mlm_prob <= 1 or min(cfg.mlm_mask, cfg.mlm_random) < 0 or cfg.mlm_mask + cfg.mlm_random > 1:
        raise UserError("mlm_prob must be in (0, 1], and mlm_mask, mlm_random >= 0 with a sum of at most 1")
    if not 0 < cfg.train_fraction <= 1 or not 0 <= cfg.train_noise <= 1:
        raise UserError("train_fraction must be in (0, 1] and train_noise in [0, 1]")
    if cfg.split_by == "windows" and (cfg.batching != "packed" or cfg.train_fraction < 1 or cfg.train_noise
                                      or cfg.sigmoid_targets != "next"):
        # ngram: the sets would be counted on the joined text, validation included, at the wrong positions
        raise UserError("split_by='windows' needs batching='packed' and sigmoid_targets='next', and no "
                        "train_fraction or train_noise")
    if cfg.sigmoid_targets == "ngram" and (not sets or cfg.objective != "clm" or cfg.batching != "packed"
                                           or cfg.ngram_k < 1):
        raise UserError("sigmoid_targets='ngram' needs head='sigmoid', objective='clm', batching='packed' and "
                        "ngram_k >= 1 (the other heads have one right answer per token)")


# --- token files --------------------------------------------------------------------------------------------

def load(cfg):
    """The run's Data, after checking the files against meta.json and the settings against the data."""
    meta, splits, folder = load_splits(cfg)
    splits, starts = variants(cfg, splits, meta)  # the studies' less, noisier or leaky text (at the bottom)
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
    table = ngram_table(splits["train"], cfg.ngram_k, vocab) if cfg.sigmoid_targets == "ngram" else None
    return Data(cfg, folder, meta, splits, spec, vocab, mlm, pieces, table, starts)


def read_meta(folder):
    """folder/meta.json, every field a reader uses checked for presence, type and range (one message naming
    it): vocab_size, dtype, train_tokens/val_tokens, the optional largest ids, the tokenizer spec (a dict with a
    kind; tokenizer.from_spec checks the rest)."""
    path = os.path.join(folder, "meta.json")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"cannot read {path} ({e}); rerun prepare_data.py") from None

    def is_int(v):
        return type(v) is int  # bool is an int to isinstance

    def is_spec(v):
        specials = v.get("special_tokens", []) if isinstance(v, dict) else None
        return isinstance(specials, list) and all(isinstance(t, str) for t in specials) and isinstance(
            v.get("kind"), str)

    checks = [("vocab_size", lambda v: is_int(v) and 1 <= v <= 2 ** 32, "a positive integer"),
              ("dtype", lambda v: v in ("uint16", "uint32"), "'uint16' or 'uint32'"),
              ("train_tokens", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
              ("val_tokens", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
              ("tokenizer", is_spec, "a tokenizer spec (a kind, and special_tokens a list of strings)")]
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a JSON object; rerun prepare_data.py")
    for key, ok, what in checks:
        if key not in meta or not ok(meta[key]):
            raise UserError(f"{path}: {key!r} must be {what}, got {meta.get(key, 'nothing')!r:.60}; rerun "
                            f"prepare_data.py")
    for key in ("train_max_id", "val_max_id"):  # absent in data prepared before they were recorded
        if meta.get(key) is not None and not (is_int(meta[key]) and meta[key] >= 0):
            raise UserError(f"{path}: {key!r} must be an integer >= 0, got {meta[key]!r:.60}; rerun prepare_data.py")
    if meta["dtype"] == "uint16" and meta["vocab_size"] > 2 ** 16:
        raise UserError(f"{path}: vocab_size {meta['vocab_size']} does not fit dtype uint16; rerun prepare_data.py")
    return meta


def load_splits(cfg):
    """(meta, {split: memmap}, folder) for data_dir/dataset, each split checked against meta.json."""
    folder = os.path.join(cfg.data_dir, cfg.dataset)
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta_path):
        known = {"shakespeare_char", "shakespeare", "openwebtext"}
        cmd = (f"python prepare_data.py {cfg.dataset}" if cfg.dataset in known
               else f"python prepare_data.py text --input YOUR_TEXT --name {cfg.dataset}")
        raise UserError(f"no prepared data in {folder}/; run `{cmd}` first")
    meta = read_meta(folder)
    try:
        splits = {split: open_split(folder, meta, split) for split in ("train", "val")}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the data in {folder}/ ({type(e).__name__}: {e}); rerun prepare_data.py")
    for split, data in splits.items():
        if len(data) <= cfg.block_size:
            raise UserError(f"{folder}/{split}.bin has {len(data)} tokens, fewer than block_size+1 "
                            f"({cfg.block_size + 1}): use more text or a smaller block_size")
    return meta, splits, folder


def open_split(folder, meta, split):
    """Memory-map folder/split.bin, refusing one that does not match meta.json: its size, and the largest id
    prepare_data.py recorded (data prepared before it recorded one is read through once, by check_ids)."""
    path = os.path.join(folder, f"{split}.bin")
    dtype = np.dtype(meta["dtype"])
    n = os.path.getsize(path) // dtype.itemsize
    if n != meta[f"{split}_tokens"]:
        raise UserError(f"{path} holds {n} tokens but meta.json says {meta[f'{split}_tokens']}: the "
                        f"files are from different runs; rerun prepare_data.py")
    data = np.memmap(path, dtype=dtype, mode="r")
    top = meta.get(f"{split}_max_id")
    if top is None:
        check_ids(data, meta["vocab_size"], path)
    elif top >= meta["vocab_size"]:
        raise UserError(f"meta.json says {path} holds token id {top}, but its vocab_size is {meta['vocab_size']}: "
                        f"the files are from different tokenizers; rerun prepare_data.py")
    return data


def check_ids(data, vocab_size, path, chunk=1 << 26):
    """Refuse tokens `data` (a split, or a part of one) holding an id the vocabulary lacks (a corrupt file, or
    one from another tokenizer): it would index past the embedding table, a crash on CPU and a device-side
    assert on a GPU. One pass, 64M tokens at a time."""
    for i in range(0, len(data), chunk):
        top = int(data[i:i + chunk].max())
        if top >= vocab_size:
            at = i + int(np.argmax(np.asarray(data[i:i + chunk]) >= vocab_size))
            raise UserError(f"{path} holds token id {int(data[at])} at position {at}, but meta.json's vocab_size is "
                            f"{vocab_size}: the file is corrupt or from another tokenizer; rerun prepare_data.py")


def batch_ids_ok(d, split, tokens, starts):
    """Refuse a batch holding an id past the vocabulary: tokens (B, L) read from positions starts[r] + 0..L-1
    of the split. One max per batch: the cheap guard against a file corrupted after prepare_data.py."""
    bad = tokens >= d.meta["vocab_size"]
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(f"{d.folder}/{split}.bin holds token id {int(tokens[r, c])} at position "
                        f"{int(starts[r]) + int(c)}, but meta.json's vocab_size is {d.meta['vocab_size']}: the "
                        f"file is corrupt or from another tokenizer; rerun prepare_data.py")


# --- batches ------------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """One micro-batch: what the model's forward takes, model(b.x, b.y, b.mask, b.sets)."""
    x: torch.Tensor  # (B, T) input ids
    y: torch.Tensor  # (B, T) targets, -1 where nothing is predicted
    mask: torch.Tensor | None = None  # (B, T) attention mask, true at real tokens; None: nothing is padded
    sets: tuple | None = None  # sigmoid_targets='ngram' (train split): each target's right answers (step_sets)


def get_batch(d, split, ix, device, seed=0, sets=True):
    """One micro-batch of the split, a Batch. ix: window starts, x = tokens [i, i+T) and y = the next tokens
    [i+1, i+T+1) (batching='packed'), or rows of the split's pieces (batching='lines', piece_batch); the mask
    is None when nothing is padded. For objective='mlm', x is masked with the seed and y holds the masked-out
    tokens (mask_tokens). sets=False: no target sets (evaluation, which scores the next token alone)."""
    data, pieces, T = d.splits[split], d.pieces.get(split), d.cfg.block_size
    if split in d.starts:  # split_by='windows': ix are rows of the split's window starts
        ix = d.starts[split][ix]
    if pieces is None:
        rows = np.stack([data[i:i + T + 1] for i in ix]).astype(np.int64)  # (B, T + 1): read once
        batch_ids_ok(d, split, rows, ix)
        rows = torch.from_numpy(rows)
        x, y, real = rows[:, :-1], rows[:, 1:], None  # views of the same rows
    else:
        x, y, real = piece_batch(data, pieces, ix, d.cfg.objective, d.mlm["pad"] if d.mlm else 0)
        starts = pieces[ix, 0]
        batch_ids_ok(d, split, torch.where(real, x, 0).numpy(), starts)  # the pad id is past the vocabulary
        batch_ids_ok(d, split, y.clamp_min(0).numpy(), starts + (d.cfg.objective == "clm"))
    if d.mlm is not None:
        x, y = mask_tokens(x, real, torch.Generator().manual_seed(seed), d.mlm)
    sets = step_sets(d, ix, device) if sets and split == "train" else None
    return Batch(to_device(x, device), to_device(y, device), to_device(real, device), sets)


def batch_rows(d, split):
    """How many different rows a batch draws from: window starts, or pieces (batching='lines')."""
    pieces, starts = d.pieces.get(split), d.starts.get(split)
    if starts is not None:
        return len(starts)
    return len(d.splits[split]) - d.cfg.block_size if pieces is None else len(pieces)


def count_tokens(d, rows):
    """Input tokens of a whole step (every rank's micro-steps) drawn as `rows`: batch * block for windows, the
    real ones for pieces (padding is not text; a clm piece of L tokens is L - 1 inputs)."""
    pieces = d.pieces.get("train")
    if pieces is None:
        return rows.numel() * d.cfg.block_size
    return int(pieces[rows.flatten().numpy(), 1].sum()) - (rows.numel() if d.cfg.objective == "clm" else 0)


def mask_seed(seed, *keys):
    """The seed of one batch's masking, from the run's seed and the batch's place (step, micro-step): the
    masks are a function of where they are used, so a resumed run and every torchrun rank draw the same ones
    as one uninterrupted process, with no generator state to save or share."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def to_device(t, device):
    """t on the device (None stays None); to a GPU through pinned memory, so that the copy runs asynchronously."""
    if t is None:
        return None
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# --- documents: batching='lines' ----------------------------------------------------------------------------

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


# --- masked language modelling: objective='mlm' --------------------------------------------------------------

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


def step_sets(d, starts, device):
    """The ngram target sets of a train micro-batch drawn at window starts (B,): the targets sit at start + 1
    .. start + block_size of the train split. None unless sigmoid_targets='ngram'."""
    if d.table is None:
        return None
    pos = np.asarray(starts, dtype=np.int64)[:, None] + 1 + np.arange(d.cfg.block_size)
    return tuple(to_device(t, device) for t in target_sets(d.table, d.splits["train"], pos, d.cfg.ngram_k,
                                                           d.vocab_size))


# --- the studies' variants: less or noisier training text, the leaky split --------------------------------------

def variants(cfg, splits, meta):
    """(splits, {split: window starts}) after train_fraction, train_noise (degrade) and split_by='windows'
    (window_split); the splits as they were and no starts when none is set. check() refuses mixing them."""
    if cfg.train_fraction < 1 or cfg.train_noise:
        splits = splits | {"train": degrade(splits["train"], cfg.train_fraction, cfg.train_noise, meta["vocab_size"])}
        if len(splits["train"]) <= cfg.block_size:
            raise UserError(f"train_fraction={cfg.train_fraction} leaves {len(splits['train'])} training tokens, "
                            f"fewer than block_size+1 ({cfg.block_size + 1})")
    if cfg.split_by == "windows":
        return window_split(splits, cfg.block_size)
    return splits, {}


NOISE_SEED = 0  # every run sees the same noisy tokens, whatever its own seed


def degrade(data, fraction, noise, vocab_size):
    """The first `fraction` of a split, with round(noise * n) of its n tokens, at random places, replaced by ids
    drawn uniformly from the vocabulary (1 in vocab_size of them draws the id it replaces). Noise makes a copy
    in memory; a fraction alone stays a view of the memory-mapped file."""
    data = data[:int(len(data) * fraction)]
    if noise:
        rng = np.random.default_rng(NOISE_SEED)
        data = np.array(data)
        where = rng.choice(len(data), size=round(noise * len(data)), replace=False)
        data[where] = rng.integers(0, vocab_size, size=len(where), dtype=data.dtype)
    return data


SPLIT_SEED = 0
WINDOW_SPLIT_MAX_TOKENS = 200_000_000  # the whole text is read into memory


def window_split(splits, block_size):
    """split_by='windows': train and val joined into one text, and its windows of block_size + 1 tokens (one
    starting at every token) dealt at random between the splits, val getting its share of the text: a random
    split of a dataset of overlapping windows. It leaks: a val window's neighbours, starting a token or two
    before or after it and holding all but a token or two of its text, are nearly all train windows, so the
    val loss measures memory of trained text. -> ({split: the joined text}, {split: its window starts})."""
    n_val = len(splits["val"])
    if len(splits["train"]) + n_val > WINDOW_SPLIT_MAX_TOKENS:
        raise UserError(f"split_by='windows' reads the whole text into memory; it is for small texts "
                        f"(at most {WINDOW_SPLIT_MAX_TOKENS:,} tokens)")
    text = np.concatenate([splits["train"], splits["val"]])
    n = len(text) - block_size  # windows [i, i + block_size]
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    k = round(n * n_val / len(text))
    return {"train": text, "val": text}, {"train": np.sort(order[k:]), "val": np.sort(order[:k])}
