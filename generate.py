"""
Generation: a KV cache, and the sampling knobs (greedy, temperature, top-k, top-p) on the normalised
distribution every head gives (GPT.head_log_probs); `fill` for a masked language model.

The cache: each new token needs the keys and values of all earlier tokens at every layer, and those never
change, so they are kept instead of recomputed: one token's work per step instead of a whole sequence's.
Every token is predicted exactly as the cache-free forward over the same window would predict it.
"""

import torch


class KVCache:
    """Keys and values of the positions seen so far, one preallocated (B, nh, block_size, hs) pair per layer.
    Layers call `append` in order during one forward; `advance` then moves the write position past the new
    tokens. Preallocating avoids a torch.cat (a copy of the whole past) at every layer of every step."""

    def __init__(self, config):
        self.block_size, self.n_layer = config.block_size, config.n_layer
        self.k, self.v = [None] * config.n_layer, [None] * config.n_layer
        self.pos, self.layer = 0, 0

    def append(self, k, v):
        B, nh, T, hs = k.shape
        i = self.layer
        if self.k[i] is None:  # allocated on first use, in the dtype attention runs in (bf16 under autocast)
            self.k[i] = k.new_empty(B, nh, self.block_size, hs)
            self.v[i] = v.new_empty(B, nh, self.block_size, hs)
        self.k[i][:, :, self.pos:self.pos + T] = k
        self.v[i][:, :, self.pos:self.pos + T] = v
        self.layer += 1
        return self.k[i][:, :, :self.pos + T], self.v[i][:, :, :self.pos + T]

    def advance(self, T):
        self.pos, self.layer = self.pos + T, 0

    def repeat(self, n):
        """Make the one sequence cached so far n sequences, each to be continued its own way (hellaswag.py:
        a context read once, then four endings). Copies only the positions written."""
        for i, (k, v) in enumerate(zip(self.k, self.v)):
            self.k[i], self.v[i] = k.new_empty(n, *k.shape[1:]), v.new_empty(n, *v.shape[1:])
            self.k[i][:, :, :self.pos] = k[:, :, :self.pos]
            self.v[i][:, :, :self.pos] = v[:, :, :self.pos]


def filter_log_probs(logp, top_k=None, top_p=None):
    """Keep the top_k most likely tokens and/or the smallest set whose probability sums to at least top_p
    (nucleus sampling); the rest get -inf. The result is renormalised. logp: (B, V) log-probabilities."""
    if top_k is not None:
        kth = torch.topk(logp, min(top_k, logp.size(-1)), dim=-1).values[:, [-1]]  # (B, 1)
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logp, order = torch.sort(logp, dim=-1, descending=True)
        p = sorted_logp.softmax(dim=-1)
        # drop a token when the more likely ones before it already reach top_p; the most likely one stays
        drop_sorted = (p.cumsum(dim=-1) - p) >= top_p
        drop = torch.empty_like(drop_sorted).scatter_(1, order, drop_sorted)  # back to vocabulary order
        logp = logp.masked_fill(drop, float("-inf"))
    return logp.log_softmax(dim=-1)


def sample_next(logp, temperature=1.0, top_k=None, top_p=None, greedy=False):
    """One token id per row (B, 1) from log-probabilities (B, V). temperature 0 means greedy."""
    if greedy or temperature == 0:
        return logp.argmax(dim=-1, keepdim=True)
    logp = filter_log_probs(logp / temperature, top_k, top_p)  # T<1 sharpens, T>1 flattens
    return torch.multinomial(logp.exp(), num_samples=1)


@torch.no_grad()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False, stop_token=None,
           use_cache=True):
    """Yield the next token (B, 1) max_new_tokens times, each sampled given everything before it. Past
    block_size the prediction is made from the last block_size tokens, and the cache is re-filled from that
    window at every step: sliding the window changes every kept key and value, so the cache pays off for
    generations that fit in the context (docs/design.md, "The KV cache, and why it cannot roll").
    stop_token: a row that generates it is done (one in the prompt does not count: GPT-2 is sampled from an
    <|endoftext|> prompt) and repeats it from then on; the stream ends when every row is done."""
    if not model.config.causal:
        raise ValueError("this model is bidirectional (a masked language model): it predicts the tokens at "
                         "<mask> positions, not the next one; use fill")
    bs = model.config.block_size
    cache, done = None, torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # rows that stopped
    for _ in range(max_new_tokens):
        if not use_cache:
            h = model.hidden(idx[:, -bs:])
        elif cache is None or cache.pos >= bs:  # (re)fill the cache from the last block_size tokens
            cache = KVCache(model.config)
            h = model.hidden(idx[:, -bs:], cache)
        else:
            h = model.hidden(idx[:, -1:], cache)
        h = h[:, -1]
        logp = model.head_log_probs(model.logits(h), h)  # (B, V)
        idx_next = sample_next(logp, temperature, top_k, top_p, greedy)  # (B, 1)
        if stop_token is not None:
            idx_next = idx_next.masked_fill(done[:, None], stop_token)  # a row that stopped stays stopped
            done |= idx_next[:, 0] == stop_token
        idx = torch.cat((idx, idx_next), dim=1)
        yield idx_next
        if stop_token is not None and done.all():
            return


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False, stop_token=None,
             use_cache=True):
    """idx (B, T) followed by up to max_new_tokens sampled tokens: (B, T + n). See `stream`."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, greedy, stop_token, use_cache))
    return torch.cat([idx, *new], dim=1)


@torch.no_grad()
def fill(model, idx, mask_id, vocab=None, temperature=1.0, top_k=None, top_p=None, greedy=False):
    """idx (B, T) with every mask_id replaced by a token, by a bidirectional model: one mask per forward pass,
    the one the model is most sure of first, each kept token then context for the rest (why, and what it costs
    against one pass for all: docs/design.md, "Filling masks most confident first"). Every remaining mask is
    predicted and drawn (greedy, temperature, top-k, top-p), and only the most probable draw is kept. Only ids
    below `vocab` are filled in (default mask_id: the special tokens, <mask> first, come after the vocabulary)."""
    if model.config.causal:
        raise ValueError("fill needs a bidirectional model (trained with objective='mlm'); a causal model "
                         "continues text with generate")
    vocab = mask_id if vocab is None else vocab
    idx = idx.clone()
    while (masked := idx == mask_id).any():  # (B, T)
        row, col = masked.nonzero(as_tuple=True)  # every remaining mask
        logp = model.log_probs(idx)[row, col, :vocab]  # (N, vocab)
        tok = sample_next(logp, temperature, top_k, top_p, greedy)  # (N, 1)
        conf = torch.full(idx.shape, float("-inf"), device=idx.device)  # (B, T)
        conf[row, col] = logp.gather(1, tok).squeeze(1)  # log p of each draw under the model
        draw = torch.zeros_like(idx)
        draw[row, col] = tok.squeeze(1)
        best = conf.argmax(1)  # (B,): this row's most confident mask
        rows = masked.any(1).nonzero(as_tuple=True)[0]  # rows that still have one
        idx[rows, best[rows]] = draw[rows, best[rows]]
    return idx
