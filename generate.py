"""
Generation: a KV cache, and the sampling knobs (greedy, temperature, top-k, top-p) on the normalised
distribution every head gives (GPT.head_log_probs); `fill` for a masked language model.

The cache: each new token needs the keys and values of all earlier tokens at every layer, and those never
change, so they are kept instead of recomputed: one token's work per step instead of a whole sequence's.
Every token is predicted exactly as the cache-free forward over the same window would predict it.

The compiled decode step (compile=True): at batch 1 a step is hundreds of small operations, and the time goes
to issuing them, not to the arithmetic. torch.compile makes the step one graph, fused, and on a GPU replays it
as a CUDA graph; for that every step must have the same shapes, hence the static cache (docs/design.md, "A
compiled decode step").
"""

import torch


class KVCache:
    """Keys and values of the positions seen so far, one preallocated (B, nh, block_size, hs) pair per layer.
    Layers call `append` in order during one forward; `advance` then moves the write position past the new
    tokens. Preallocating avoids a torch.cat (a copy of the whole past) at every layer of every step.

    Two ways to use it. Eager: pos is an int, and each layer attends to the slots written so far, a slice whose
    length grows by one per token. Static (`make_static`, for the compiled decode step): pos is a tensor, new
    keys and values are written in place at pos, and attention reads all block_size slots with the unwritten
    ones masked out. Every shape is then the same at every step, so torch.compile captures the step once."""

    def __init__(self, config):
        self.block_size, self.n_layer = config.block_size, config.n_layer
        self.k, self.v = [None] * config.n_layer, [None] * config.n_layer
        self.pos, self.layer = 0, 0

    def append(self, k, v):
        """Write k, v (B, nh, T, hs) at the current position. Returns the keys and values to attend to and
        who sees whom among them: a mask, or None for plain causal attention (or one query that sees all)."""
        B, nh, T, hs = k.shape
        i = self.layer
        self.layer += 1
        if torch.is_tensor(self.pos):  # static: one token, at a position held on the device
            self.k[i].index_copy_(2, self.pos, k)
            self.v[i].index_copy_(2, self.pos, v)
            return self.k[i], self.v[i], (self.slots <= self.pos)[None]  # (1, block_size): the slots written
        if self.k[i] is None:  # allocated on first use, in the dtype attention runs in (bf16 under autocast)
            self.k[i] = k.new_empty(B, nh, self.block_size, hs)
            self.v[i] = v.new_empty(B, nh, self.block_size, hs)
        self.k[i][:, :, self.pos:self.pos + T] = k
        self.v[i][:, :, self.pos:self.pos + T] = v
        L = self.pos + T
        # T queries after a cached past: query t sits at position pos + t and sees keys 0..pos + t
        mask = torch.ones(T, L, dtype=torch.bool, device=k.device).tril(L - T) if 1 < T < L else None
        return self.k[i][:, :, :L], self.v[i][:, :, :L], mask

    def advance(self, T):
        """After a forward of T tokens. A static cache's position is moved by its caller, outside the compiled
        step (`stream`): a compiled graph that changed its own input would be harder to capture (CUDA graphs)."""
        self.layer = 0
        if not torch.is_tensor(self.pos):
            self.pos += T

    def make_static(self):
        """Switch to static use (see the class): the position becomes a tensor, and the slots not yet written
        are zeroed, since masked-out keys still pass through the arithmetic (0 * NaN would be NaN)."""
        device = self.k[0].device
        for buf in self.k + self.v:
            buf[:, :, self.pos:] = 0
        self.slots = torch.arange(self.block_size, device=device)
        self.pos = torch.tensor([self.pos], device=device)

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


def last_logits(model, idx, cache=None):
    """The logits (B, V) and final hidden state (B, C) that predict the token after idx (B, T)."""
    h = model.hidden(idx, cache)[:, -1]
    return model.logits(h), h


_compiled = {}


def compiled_logits(device_type):
    """last_logits compiled: each of its fixed shapes (the one-token decode step with a static cache, the
    window past block_size) becomes one graph whose small operations are fused, with no Python between them.
    On CUDA the graph is also recorded as a CUDA graph ('reduce-overhead'): one launch replays every kernel."""
    if device_type not in _compiled:
        mode = "reduce-overhead" if device_type == "cuda" else None
        _compiled[device_type] = torch.compile(last_logits, mode=mode, fullgraph=True, dynamic=False)
    return _compiled[device_type]


CHECK_EVERY = 16  # tokens between the checks that every row has stopped (each check waits for the device)


@torch.no_grad()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False, stop_token=None,
           use_cache=True, compile=False):
    """Yield the next token (B, 1) max_new_tokens times, each sampled given everything before it. Past
    block_size the prediction is made from the last block_size tokens, the whole window recomputed at every
    step: sliding the window changes every kept key and value, so the cache pays off for generations that fit
    in the context (docs/design.md, "The KV cache, and why it cannot roll").
    compile: the decode step with a static cache, compiled (docs/design.md, "A compiled decode step"): the
    prompt is read eagerly (its length varies), then every step has the same shapes and runs as one graph.
    Its tokens are the eager path's, up to float rounding in the logits.
    stop_token: a row that generates it is done (one in the prompt does not count: GPT-2 is sampled from an
    <|endoftext|> prompt) and repeats it from then on; the stream ends once every row is done, which it checks
    every CHECK_EVERY tokens, so up to CHECK_EVERY - 1 repeats may follow (`generate` cuts them off)."""
    if not model.config.causal:
        raise ValueError("this model is bidirectional (a masked language model): it predicts the tokens at "
                         "<mask> positions, not the next one; use fill")
    if compile and not use_cache:
        raise ValueError("compile=True decodes with the static KV cache; use_cache=False is the cache-free path")
    bs = model.config.block_size
    step = compiled_logits(idx.device.type) if compile else last_logits
    cache, idx_next = None, None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # rows that stopped
    for i in range(max_new_tokens):
        if not use_cache or idx.size(1) > bs:  # no cache, or past the context: the last block_size tokens
            # a copy: a slice of the growing idx has new strides at every step, and a compiled graph is made
            # for one set of strides
            z, h = step(model, idx[:, -bs:].clone(memory_format=torch.contiguous_format))
        elif cache is None:  # read the prompt into the cache
            cache = KVCache(model.config)
            z, h = last_logits(model, idx, cache)
            if compile:
                make_static(model, cache)
        else:  # one new token
            z, h = step(model, idx_next, cache)
            if compile:
                cache.pos += 1
        logp = model.head_log_probs(z, h)  # (B, V)
        idx_next = sample_next(logp, temperature, top_k, top_p, greedy)  # (B, 1)
        if stop_token is not None:
            idx_next = idx_next.masked_fill(done[:, None], stop_token)  # a row that stopped stays stopped
            done |= idx_next[:, 0] == stop_token
        idx = torch.cat((idx, idx_next), dim=1)
        yield idx_next
        if stop_token is not None and (i + 1) % CHECK_EVERY == 0 and done.all():
            return


def make_static(model, cache):
    """Make the cache static for the compiled step (KVCache.make_static). RoPE's tables are made long enough
    first, as the step looks positions up; on CUDA, the buffers are marked as living at fixed addresses, so the
    CUDA graph may write into them in place."""
    if model.config.pos == "rope":
        model.rope(0, model.config.block_size)
    cache.make_static()
    if cache.pos.device.type == "cuda":
        for buf in cache.k + cache.v:
            torch._dynamo.mark_static_address(buf)


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False, stop_token=None,
             use_cache=True, compile=False):
    """idx (B, T) followed by up to max_new_tokens sampled tokens: (B, T + n), ending where the last row
    generated stop_token. See `stream`."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, greedy, stop_token, use_cache,
                      compile))
    out = torch.cat([idx, *new], dim=1)
    if stop_token is not None and new:
        done = (torch.cat(new, dim=1) == stop_token).cummax(dim=1).values.all(dim=0)  # (n,): every row stopped
        if done.any():
            out = out[:, :idx.size(1) + int(done.nonzero()[0]) + 1]
    return out


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
