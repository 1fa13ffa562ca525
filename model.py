"""
GPT-2, top to bottom: attention, MLP, block, config, model, generation.

The model maps a sequence of token ids to a score (logit) for every possible next token at every position:

    idx (B, T) -> token + position embeddings (B, T, C) -> n_layer x Block -> LayerNorm -> head -> (B, T, V)

Each Block is pre-LayerNorm with two residual branches, x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), so the
residual stream carries the embedding through unchanged and every layer adds a correction to it.
The parameter names are GPT-2's own (wte, wpe, h.0.attn.c_attn, ...) so importing real weights is a table.

Two things here that nanoGPT lacks:
- `log_probs`: *normalised* next-token log-probabilities. Sampling and evaluation score only through it, so a
  different output head (the switch `head` in GPTConfig) changes one place.
- a KV cache in `generate`: during generation each new token needs the keys and values of all earlier tokens
  at every layer; those never change, so they are stored instead of recomputed, and each step costs one
  token's worth of work instead of a whole sequence's.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    """Multi-head attention: softmax(q k^T / sqrt(hs)) v, each position seeing only itself and the past."""

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask, causal = None, True
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, L, hs): the cached past followed by these T positions
            L = k.size(2)
            if T == 1:
                causal = False  # the one new query may see every cached key
            elif L > T:
                # query i sits at absolute position L-T+i and sees keys 0..L-T+i
                mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(diagonal=L - T)
                causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: expand 4x, GELU (GPT-2's tanh approximation), project back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


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


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the model sees (learned position embeddings exist only this far)
    vocab_size: int = 50304  # GPT-2's 50,257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2 has them
    head: str = "softmax"  # the output head: how logits become a loss and a distribution over the next token

    def __post_init__(self):
        if self.head != "softmax":
            raise ValueError(f"unknown head {self.head!r}; this version has 'softmax'")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output layer scores token j by the dot product with j's input embedding, so one
        # matrix learns what a token means both as input and as prediction (and 38M fewer parameters in GPT-2)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * n_layer): each of the
        # 2 * n_layer branches adds to the same sum, and this keeps its variance from growing with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameters, by default without the position embeddings (token embeddings count: they are tied to
        the output layer and do real work there), the N in the 6N FLOPs-per-token estimate."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden(self, idx, cache=None):
        """Final hidden states (B, T, C) for token ids (B, T); with a cache, idx continues its sequence."""
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cache)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    # --- the output head: the only place where the choice of head matters --------------------------------

    def head_loss(self, logits, targets):
        """Mean loss per predicted token, targets of -1 ignored. Softmax: cross-entropy, -log softmax(z)_y."""
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def head_log_probs(self, logits):
        """Normalised next-token log-probabilities from logits (in fp32: bf16 would round them coarsely)."""
        return F.log_softmax(logits.float(), dim=-1)

    # ------------------------------------------------------------------------------------------------------

    def forward(self, idx, targets=None):
        """Logits (B, T, V) at every position and, given targets (B, T), the mean loss (else None)."""
        logits = self.lm_head(self.hidden(idx))
        loss = self.head_loss(logits, targets) if targets is not None else None
        return logits, loss

    def log_probs(self, idx):
        """Normalised log p(next token | prefix) at every position: (B, T, V). Everything that scores or
        samples goes through here, so every head is compared on the same footing."""
        return self.head_log_probs(self.lm_head(self.hidden(idx)))

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
               stop_token=None, use_cache=True):
        """Yield the next token (B, 1) max_new_tokens times, each sampled given everything before it.

        Once the sequence is longer than block_size, the prediction is made from its last block_size tokens,
        exactly as a cache-free forward over that window would. With learned absolute positions, sliding the
        window moves every token to a new position, which changes every key and value: a cache cannot be
        'rolled', and each step past block_size re-runs the whole window (the cache then saves nothing;
        it pays off for generations that fit in the context)."""
        bs = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = self.lm_head(self.hidden(idx[:, -bs:])[:, -1])
            else:
                if cache is None or cache.pos >= bs:  # (re)fill the cache from the last block_size tokens
                    cache = KVCache(self.config)
                    h = self.hidden(idx[:, -bs:], cache)
                else:
                    h = self.hidden(idx[:, -1:], cache)
                logits = self.lm_head(h[:, -1])
            logp = self.head_log_probs(logits)  # (B, V)
            idx_next = sample_next(logp, temperature, top_k, top_p, greedy)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next
            if stop_token is not None and (idx == stop_token).any(dim=1).all():
                return

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
                 stop_token=None, use_cache=True):
        """idx (B, T) followed by up to max_new_tokens sampled tokens: (B, T + n). See `stream`."""
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, greedy, stop_token, use_cache))
        return torch.cat([idx, *new], dim=1)


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
