"""
GPT-2, top to bottom: attention, MLP, block, config, model, generation.

The model maps a sequence of token ids to a score (logit) for every possible next token at every position:

    idx (B, T) -> token + position embeddings (B, T, C) -> n_layer x Block -> LayerNorm -> head -> (B, T, V)

Each Block is pre-LayerNorm with two residual branches, x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), so the
residual stream carries the embedding through unchanged and every layer adds a correction to it.
The parameter names are GPT-2's own (wte, wpe, h.0.attn.c_attn, ...) so importing real weights is a table.

Three switches in GPTConfig put in LLaMA's part instead of GPT-2's, each on its own (the defaults are GPT-2,
exactly): norm='rmsnorm' (RMSNorm for ln_1, ln_2, ln_f), mlp='swiglu' (a gated MLP of the same cost) and
pos='rope' (no wpe: queries and keys are rotated by their positions inside attention). The names stay GPT-2's.
A fourth, causal=False, lets every position attend to the whole sequence: a masked language model (BERT's
objective, train.py objective='mlm') that predicts the token at each position, filled in by `fill`.

Batches of sequences of different lengths are padded on the right and come with an attention_mask (B, T),
true at real tokens: padding is never attended to and never a target (see GPT.attn_mask).

Two things here that nanoGPT lacks:
- `log_probs`: *normalised* next-token log-probabilities. Sampling and evaluation score only through it, so a
  different output head (the switch `head` in GPTConfig) changes one place. Three heads:
  softmax (cross-entropy, GPT-2's), sigmoid (every token an independent yes/no, binary cross-entropy) and
  bayes (a Gaussian over the output weights, sampled at prediction time). See "the output head" below.
- a KV cache in `generate`: during generation each new token needs the keys and values of all earlier tokens
  at every layer; those never change, so they are stored instead of recomputed, and each step costs one
  token's worth of work instead of a whole sequence's.
"""

import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g: LayerNorm without subtracting the mean (LLaMA's norm). What the
    residual branches need is inputs of a steady size; the rescaling gives that, the centring costs a reduction.
    Normalised in fp32 and cast back, so a bf16 x does not lose digits in the mean of its squares."""

    eps = 1e-5  # keeps 1/sqrt finite for an all-zero x; the same as nn.LayerNorm's default

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))  # g; named like LayerNorm's so state_dict keys stay GPT-2's
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None  # a shift as LayerNorm's; LLaMA has none

    def forward(self, x):
        x32 = x.float()
        y = (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps)).type_as(x)  # (B, T, C)
        y = y * self.weight
        return y if self.bias is None else y + self.bias


def make_norm(config):
    """The norm config.norm names, for ln_1, ln_2 and ln_f."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.bias)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def rope_tables(head_size, theta, length, device=None):
    """cos and sin (length, hs/2) of the rotary angles pos * f_i, f_i = theta^(-2i/hs) for pair i < hs/2: the
    pairs turn from 1 radian per position (i = 0) down to about 1/theta, so fast pairs tell near positions
    apart and slow ones far positions."""
    f = theta ** (-torch.arange(0, head_size, 2, dtype=torch.float32, device=device) / head_size)  # (hs/2,)
    angle = torch.outer(torch.arange(length, dtype=torch.float32, device=device), f)  # (length, hs/2)
    return angle.cos(), angle.sin()


def apply_rope(x, cos, sin):
    """Rotary position embedding: rotate pair i of x (B, nh, T, hs) by the angle pos * f_i of its position,
    cos and sin (T, hs/2) from rope_tables. The pairs are (x_i, x_{i + hs/2}), the two halves of a head (any
    fixed pairing works; training adapts to it). A rotation keeps lengths, and R(m)^T R(n) = R(n - m), so
    (R(m) q) . (R(n) k) = q . R(n - m) k: scores depend on positions only through n - m, and nothing is added
    to the residual stream. In fp32 and cast back: bf16 would blur the angles of far positions."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    y = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, nh, T, hs)
    return y.type_as(x)


class CausalSelfAttention(nn.Module):
    """Multi-head attention: softmax(q k^T / sqrt(hs)) v, each position seeing only itself and the past; or,
    with causal=False (a masked language model), every position of the sequence, the future included.
    With pos='rope', q and k are first rotated by their positions (apply_rope); the cache then holds keys
    already rotated, and each new query and key is rotated by its own position, cache.pos + t.
    A mask (B, 1, T, T) from GPT.attn_mask, when given, says who sees whom (padding and causality in one)."""

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.causal = config.causal

    def forward(self, x, cache=None, rope=None, mask=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:  # (cos, sin) at these T positions
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        causal = self.causal and mask is None  # a given mask already holds the causality
        if cache is not None:  # only without a mask and for a causal model (GPT.hidden checks)
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


class SwiGLU(nn.Module):
    """LLaMA's feed-forward: c_proj(silu(x W_gate) * (x W_up)), silu(a) = a * sigmoid(a). The gate decides, per
    hidden unit and token, how much of the linear 'up' value passes. Three matrices instead of two, so the
    hidden width is 2/3 of GPT-2's 4 * n_embd for the same cost (3 * C * 8C/3 = 2 * C * 4C parameters and
    FLOPs), rounded up to a multiple of mlp_multiple."""

    def __init__(self, config):
        super().__init__()
        m = config.mlp_multiple
        H = -(-8 * config.n_embd // (3 * m)) * m  # ceil((2/3 * 4 * C) / m) * m, in integers
        self.c_fc = nn.Linear(config.n_embd, 2 * H, bias=config.bias)  # gate and up in one matmul: [gate | up]
        self.c_proj = nn.Linear(H, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        gate, up = self.c_fc(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.dropout(self.c_proj(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else MLP(config)

    def forward(self, x, cache=None, rope=None, mask=None):
        x = x + self.attn(self.ln_1(x), cache, rope, mask)
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


class SigmoidBCE(torch.autograd.Function):
    """Per token, binary cross-entropy summed over the vocabulary: sum_j softplus(z_j) - sum_{j in S} z_j, for
    logits z (N, V) and each token's set S of right answers, given as (rows, cols): one pair (token, id) per
    member. The next token alone is rows = 0..N-1, cols = y; train.py's sigmoid_targets='ngram' gives sets.
    Its gradient is sigma(z) - multihot(S), written out here: autograd of the formula would keep an extra
    (N, V) tensor and build a dense one from the indexing's backward; this builds one, like cross-entropy's
    backward does."""

    @staticmethod
    def forward(ctx, z, rows, cols):
        ctx.save_for_backward(z, rows, cols)
        hits = torch.zeros(len(z), dtype=z.dtype, device=z.device).index_add_(0, rows, z[rows, cols])
        return F.softplus(z).sum(-1) - hits

    @staticmethod
    def backward(ctx, g):
        z, rows, cols = ctx.saved_tensors
        grad = torch.sigmoid(z)
        grad.index_put_((rows, cols), z.new_tensor(-1.0), accumulate=True)
        return grad.mul_(g[:, None]), None, None


# The Bayesian head's two training terms as autograd functions with their gradients written out. Both go
# through their (N, V) or (V, C) tensors a block of rows at a time: what is needed only on the way (the noise,
# the draw, sigma) lives in one block-sized buffer (a few MB, in cache) and only the results exist at full
# size. Written as plain torch ops the same formulas make a dozen full-size temporaries, and on a CPU each
# fresh tensor this size costs a pass of page faults besides its own writes: the bayes step took 1.5x as long.


BLOCK = 2 ** 20  # elements in a block on a CPU: 4 MB of fp32, in cache


def row_blocks(x):
    """Slices of x's rows, about BLOCK elements each on a CPU, 64x that on a GPU (where what counts is few
    kernel launches, and the caching allocator makes big temporaries cheap)."""
    rows = max(1, (BLOCK if x.device.type == "cpu" else 64 * BLOCK) // x[0].numel())
    return [slice(i, i + rows) for i in range(0, len(x), rows)]


def scratch(x, blocks):
    """One block's worth of fp32 memory, reused by every block."""
    return torch.empty((blocks[0].stop - blocks[0].start, *x.shape[1:]), device=x.device)


class SampledCE(torch.autograd.Function):
    """bayes training loss per token: the cross-entropy of one draw of the logits, s = z + sqrt(v) * eps with
    eps ~ N(0, 1), for mean logits z = h mu^T (N, V), hidden states squared h2 = h^2 (N, C), the weights'
    rho (V, C) (sigma = softplus(rho), s2 = sigma^2) and targets y (N,). The logit variances v = h2 s2^T are
    computed here (one matmul: the local reparameterisation trick). Gradients, written out:
        dL/dz = softmax(s) - onehot(y)          dL/dv = dL/dz * eps / (2 sqrt(v))
        dL/dh2 = (dL/dv) s2                     dL/drho = ((dL/dv)^T h2) * 2 sigma * sigmoid(rho)
    Both (N, V) gradients are made in forward, where each block's draw is at hand, in the memory of v and of
    one other tensor; backward scales them by the incoming gradient and does the matmuls."""

    @staticmethod
    def forward(ctx, z, h2, rho, y):
        s2 = F.softplus(rho.float()).square_()
        gv = torch.mm(h2, s2.to(h2.dtype).t()).float()  # the variances v, then dL/dv in the same memory
        gz = torch.empty_like(z)  # each block's draw s, then softmax(s) - onehot(y) in the same memory
        loss = z.new_empty(len(z))
        blocks = row_blocks(z)
        noise = scratch(z, blocks)
        for b in blocks:
            std = gv[b].clamp_min_(1e-20).sqrt_()
            eps = noise[:len(std)].normal_()
            s = torch.addcmul(z[b], eps, std, out=gz[b])
            lse = s.logsumexp(-1)
            loss[b] = lse - s.gather(1, y[b, None]).squeeze(1)
            p = s.sub_(lse[:, None]).exp_()  # softmax(s), in place
            p[torch.arange(len(p), device=p.device), y[b]] -= 1
            torch.mul(p, eps.div_(std).mul_(0.5), out=std)  # dL/dv = dL/dz * eps / (2 std), over std
        ctx.save_for_backward(gz, gv, h2, s2)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        # the saved tensors are changed in place: a second backward (retain_graph) is refused by autograd's
        # check that saved tensors are unchanged
        gz, gv, h2, s2 = ctx.saved_tensors
        gz.mul_(g[:, None])
        gv = gv.mul_(g[:, None]).to(h2.dtype)
        grad_h2 = gv @ s2.to(h2.dtype)
        grad_rho = (gv.t() @ h2).float()
        sigma = s2.sqrt_()  # d sigma / d rho = sigmoid(rho) = 1 - exp(-sigma), as softplus(rho) = log(1 + e^rho)
        grad_rho.mul_(sigma).mul_(2).mul_(sigma.neg_().expm1_().neg_())
        return gz, grad_h2, grad_rho, None


class GaussianKL(torch.autograd.Function):
    """KL(N(mu, sigma^2) || N(0, sp^2)) summed over weights, sigma = softplus(rho), in closed form per weight:
        log(sp / sigma) + (sigma^2 + mu^2) / (2 sp^2) - 1/2
    Gradients: dKL/dmu = mu / sp^2, dKL/drho = (sigma / sp^2 - 1 / sigma) sigmoid(rho).
    softplus(rho) = log(e^rho + e^0) is written as logaddexp(rho, 0), which can write into a given buffer."""

    @staticmethod
    def forward(ctx, mu, rho, sp):
        mu32, zero = mu.float().flatten(), rho.new_zeros((), dtype=torch.float32)
        kl = (mu32 @ mu32) / (2 * sp ** 2) + rho.numel() * (math.log(sp) - 0.5)
        blocks = row_blocks(rho)
        buf = scratch(rho, blocks)
        for b in blocks:
            sigma = torch.logaddexp(rho[b].float(), zero, out=buf[:len(rho[b])]).flatten()
            kl = kl + (sigma @ sigma) / (2 * sp ** 2) - sigma.log_().sum()
        ctx.save_for_backward(mu, rho)
        ctx.sp = sp
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        mu, rho = ctx.saved_tensors
        sp2, zero = ctx.sp ** 2, rho.new_zeros((), dtype=torch.float32)
        grad_rho = torch.empty_like(rho, dtype=torch.float32)
        blocks = row_blocks(rho)
        buf = scratch(rho, blocks)
        for b in blocks:
            sigma = torch.logaddexp(rho[b].float(), zero, out=buf[:len(rho[b])])
            d = torch.square(sigma, out=grad_rho[b])  # then (sigma^2 - sp^2) / (sigma sp^2) * sigmoid(rho)
            d.sub_(sp2).div_(sigma).mul_(g / sp2).mul_(torch.sigmoid(rho[b].float(), out=sigma))
        return mu * (g / sp2), grad_rho.to(rho.dtype), None


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the model sees (learned position embeddings exist only this far)
    vocab_size: int = 50304  # GPT-2's 50,257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in every Linear and norm layer, as GPT-2 has them
    # architecture switches, each on its own; the defaults are GPT-2's, the alternatives LLaMA's
    norm: str = "layernorm"  # 'layernorm' or 'rmsnorm' (rescale only, no centring), for ln_1, ln_2 and ln_f
    mlp: str = "gelu"  # 'gelu' (4 * n_embd wide) or 'swiglu' (gated, ~8/3 * n_embd wide: the same parameters)
    # swiglu: hidden width rounded up to a multiple of this, for matmul-friendly shapes. LLaMA uses 256 at
    # n_embd 4096 (10,923 -> 11,008, +0.8%); at n_embd 128 that would make 341 into 512, 64 makes it 384
    mlp_multiple: int = 64
    pos: str = "learned"  # 'learned' (wpe, added to the input) or 'rope' (rotary: q and k rotated in attention)
    rope_theta: float = 10000.0  # rope: the pairs of a head turn from 1 to ~1/rope_theta radians per position
    # True: each position sees only the past, and its logits predict the *next* token (GPT). False: every
    # position sees the whole sequence, and its logits predict the token *at* that position (a masked language
    # model, BERT-style: trained to recover <mask>ed tokens; train.py objective='mlm')
    causal: bool = True
    head: str = "softmax"  # the output head: 'softmax', 'sigmoid' or 'bayes' (see GPT.head_loss)
    bayes_prior_std: float = 1.0  # bayes: prior N(0, bayes_prior_std^2) on every output weight
    bayes_init_std: float = 3e-3  # bayes: posterior std at init (logit noise ~ this * |h|, well under 1)
    bayes_samples: int = 10  # bayes: weight draws averaged for a prediction

    def __post_init__(self):
        if self.head not in ("softmax", "sigmoid", "bayes"):
            raise ValueError(f"unknown head {self.head!r}; choose softmax, sigmoid or bayes")
        if self.head == "sigmoid" and self.vocab_size < 2:
            raise ValueError("the sigmoid head needs vocab_size >= 2")
        if self.bayes_prior_std <= 0 or self.bayes_init_std <= 0 or self.bayes_samples < 1:
            raise ValueError("bayes_prior_std and bayes_init_std must be > 0 and bayes_samples >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        for key, choices in (("norm", ("layernorm", "rmsnorm")), ("mlp", ("gelu", "swiglu")),
                             ("pos", ("learned", "rope"))):
            if getattr(self, key) not in choices:
                raise ValueError(f"unknown {key} {getattr(self, key)!r}; choose {' or '.join(choices)}")
        if self.mlp_multiple < 1:
            raise ValueError(f"mlp_multiple must be at least 1, got {self.mlp_multiple}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope rotates pairs of dimensions: the head size n_embd / n_head = "
                             f"{self.n_embd // self.n_head} must be even")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            # learned position embeddings; none with rope, where positions act inside attention
            wpe=nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output layer scores token j by the dot product with j's input embedding, so one
        # matrix learns what a token means both as input and as prediction (and 38M fewer parameters in GPT-2)
        self.transformer.wte.weight = self.lm_head.weight
        V, C = config.vocab_size, config.n_embd
        if config.head == "sigmoid":
            # a bias per token, starting at logit(1/V) = -log(V-1): every sigmoid starts at 1/V, the same
            # "any token, equally" as softmax at init; without it each of V sigmoids starts at 1/2, and the
            # first steps are spent pushing V-1 of them down
            self.lm_bias = nn.Parameter(torch.full((V,), -math.log(V - 1)))
        if config.head == "bayes":
            # q(W) = N(mu, sigma^2) per output weight, sigma = softplus(rho) > 0. mu *is* the tied lm_head/wte
            # matrix: with sigma -> 0 the head is exactly the softmax head, the parameter count differs from it
            # only by rho, and a pretrained model's output weights are the posterior mean to start from
            self.lm_rho = nn.Parameter(torch.full((V, C), math.log(math.expm1(config.bayes_init_std))))
        if config.pos == "rope":
            # buffers, not parameters, and not in state_dict (persistent=False): they follow from the config,
            # and checkpoints stay free of tables that only depend on block_size
            cos, sin = rope_tables(C // config.n_head, config.rope_theta, config.block_size)  # (block_size, hs/2)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
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
        wpe = self.transformer.wpe  # None with rope: nothing to subtract
        return n - wpe.weight.numel() if non_embedding and wpe is not None else n

    def rope(self, start, T):
        """cos and sin (T, hs/2) for positions start..start+T-1. The tables are recomputed longer when a later
        position is asked for (a block_size raised after construction: RoPE has no learned table to cap it)."""
        if start + T > self.rope_cos.size(0):
            cos, sin = rope_tables(self.config.n_embd // self.config.n_head, self.config.rope_theta,
                                   max(start + T, self.config.block_size), self.rope_cos.device)
            self.rope_cos, self.rope_sin = cos, sin  # still buffers, still not saved
        return self.rope_cos[start:start + T], self.rope_sin[start:start + T]

    def attn_mask(self, attention_mask):
        """Who sees whom, (B, 1, T, T) bool for scaled_dot_product_attention, from attention_mask (B, T) (true at
        real tokens): query i sees key j if j is a real token and, for a causal model, j <= i. And every query
        sees itself, padding included: a query with no real token to look at (a row of padding only; with
        causality, padding before the first token) would otherwise see nothing, and a softmax over nothing is
        0 / 0 = NaN, which in the next layer would reach real tokens through 0 * NaN. (Recent PyTorch's SDPA
        returns zeros for such rows, but not every version and kernel does.) A real query seeing itself
        changes nothing, and what padded positions compute is ignored.
        Positions are 0..T-1 whatever the mask, so pad on the right: real tokens keep the positions they have
        alone (learned and rotary alike), and a padded row gives the same outputs as the sequence alone."""
        real = attention_mask.bool()
        T = real.size(1)
        mask = real[:, None, None, :].expand(-1, 1, T, T)  # (B, 1, T, T): the keys that are tokens
        if self.config.causal:
            mask = mask & torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
        return mask | torch.eye(T, dtype=torch.bool, device=real.device)

    def hidden(self, idx, cache=None, attention_mask=None):
        """Final hidden states (B, T, C) for token ids (B, T); with a cache, idx continues its sequence.
        attention_mask (B, T): true at real tokens, false at padding (see attn_mask), or None: no padding."""
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        if cache is not None and (attention_mask is not None or not self.config.causal):
            # a cache would need the mask of every earlier step, and a bidirectional model's past changes
            # with every new token, so there is nothing to keep
            raise ValueError("the KV cache is for causal generation without padding: call without a cache")
        mask = self.attn_mask(attention_mask) if attention_mask is not None else None
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "rope":
            rope = self.rope(start, T)  # absolute positions: with a cache, cache.pos + t
        else:
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, rope, mask)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    # --- the output head: the only place where the choice of head matters --------------------------------
    #
    # softmax: p(y) = exp(z_y) / sum_j exp(z_j); loss = -log p(y), the cross-entropy.
    # sigmoid: each token j is an independent Bernoulli with P(j follows) = sigma(z_j). Loss = binary
    #   cross-entropy summed over the vocabulary (one "yes", V-1 "no"s), averaged over tokens: nats per token on
    #   the scale of cross-entropy. As a distribution over the one next token: p(y) = sigma(z_y) / sum_j sigma(z_j).
    # bayes: softmax over logits z_j = h . w_j with W ~ q(W) = N(mu, sigma^2): trained on one draw per token,
    #   predicting with the average of bayes_samples draws' probabilities. Training adds KL(q || prior) / N
    #   (train.py, with model.kl()).

    def logits(self, h):
        """The head's logits (B, T, V) for hidden states h (B, T, C); for bayes, those of the mean weights."""
        z = self.lm_head(h)
        return z + self.lm_bias if self.config.head == "sigmoid" else z

    def head_loss(self, logits, targets, h=None, target_sets=None):
        """Mean loss per predicted token (nats), targets of -1 ignored, computed in fp32. With every target
        ignored (a masked-LM batch that happened to choose no position) the loss is 0, not 0 / 0 = NaN.
        sigmoid only: target_sets = (rows, cols), a set of right answers per token instead of the next token
        alone (SigmoidBCE; rows index the flattened (B*T) positions)."""
        V = logits.size(-1)
        z, y = logits.float().reshape(-1, V), targets.reshape(-1)
        n = (y != -1).sum().clamp_min(1)  # the tokens that count
        if self.config.head == "sigmoid":
            # -log sigma(z) = softplus(-z) = softplus(z) - z and -log(1 - sigma(z)) = softplus(z), so
            # BCE = sum_j softplus(z_j) - z_y: one pass over the logits, no one-hot or dense target is ever built
            keep = y != -1
            rows, cols = target_sets or (torch.arange(len(y), device=y.device), y.clamp_min(0))
            bce = SigmoidBCE.apply(z, rows, cols)
            return (bce * keep).sum() / n
        if target_sets is not None:
            raise ValueError("target_sets are for the sigmoid head (the others have one right answer per token)")
        if self.config.head == "bayes":
            if self.training:  # one draw of every logit (local reparameterisation): unbiased for E_q[CE]
                keep = y != -1
                h2 = h.reshape(-1, h.size(-1)).square()
                ce = SampledCE.apply(z, h2, self.lm_rho, y.clamp_min(0))
                return (ce * keep).sum() / n
            # the loss we report: NLL of the averaged prediction, never with the KL term
            logp = self.head_log_probs(logits, h).reshape(-1, V)
            return F.nll_loss(logp, y, ignore_index=-1, reduction="sum") / n
        return F.cross_entropy(z, y, ignore_index=-1, reduction="sum") / n

    def head_log_probs(self, logits, h=None):
        """Normalised next-token log-probabilities (fp32: bf16 would round them coarsely)."""
        z = logits.float()
        if self.config.head == "sigmoid":
            ls = F.logsigmoid(z)
            return ls - ls.logsumexp(-1, keepdim=True)
        if self.config.head == "bayes":
            return self.bayes_predict(logits, h)[0]
        return F.log_softmax(z, dim=-1)

    def logit_var(self, h):
        """bayes: the variance of each logit under q(W). Independent weights: Var(h . w_j) = sum_c h_c^2
        sigma_jc^2, one matmul. Drawing logits from N(mean, var) is the local reparameterisation trick: the same
        distribution as drawing W and multiplying, without ever materialising a (V, C) weight sample."""
        return h.square() @ F.softplus(self.lm_rho).square().t()

    def logit_std(self, h):
        return self.logit_var(h).clamp_min(1e-20).sqrt()

    def bayes_predict(self, logits, h, samples=None):
        """bayes: (log of the mean predictive probability, expected entropy) over `samples` draws. Averaging
        is in probability space: log (1/S) sum_s p_s = logsumexp_s log p_s - log S. The predictive entropy
        H[mean p] = E[H[p_s]] + mutual information (model uncertainty: how much the draws disagree)."""
        S = samples or self.config.bayes_samples
        z, std = logits.float(), self.logit_std(h).float()
        acc, ent = None, 0.0
        for _ in range(S):  # one draw at a time: memory stays a few (B, T, V) tensors whatever S is
            lp = F.log_softmax(z + std * torch.randn_like(z), dim=-1)
            ent = ent - (lp.exp() * lp).sum(-1) / S
            acc = lp if acc is None else torch.logaddexp(acc, lp)
        return acc - math.log(S), ent

    def kl(self):
        """bayes: KL(q(W) || N(0, bayes_prior_std^2)) summed over the output weights (GaussianKL). Zero for
        the other heads."""
        if self.config.head != "bayes":
            return torch.zeros((), device=self.lm_head.weight.device)
        return GaussianKL.apply(self.lm_head.weight, self.lm_rho, self.config.bayes_prior_std)

    # ------------------------------------------------------------------------------------------------------

    def forward(self, idx, targets=None, attention_mask=None, target_sets=None):
        """Logits (B, T, V) at every position and, given targets (B, T), the mean loss over the targets that
        are not -1 (else None). attention_mask (B, T), true at real tokens and false at padding: padded
        positions are never looked at and are never targets, whatever `targets` holds there. target_sets:
        sets of right answers for the sigmoid head (head_loss)."""
        h = self.hidden(idx, attention_mask=attention_mask)
        logits = self.logits(h)
        if targets is not None and attention_mask is not None:
            targets = targets.masked_fill(~attention_mask.bool(), -1)
        loss = self.head_loss(logits, targets, h, target_sets) if targets is not None else None
        return logits, loss

    def log_probs(self, idx, attention_mask=None):
        """Normalised log-probabilities at every position: (B, T, V), of the next token given the prefix
        (causal), or of the token at that position given the whole sequence (causal=False). Everything that
        scores or samples goes through here, so every head is compared on the same footing."""
        h = self.hidden(idx, attention_mask=attention_mask)
        return self.head_log_probs(self.logits(h), h)

    def predictive(self, h):
        """From hidden states h: the normalised log-probabilities (..., V), the predictive entropy and the
        mutual information between the next token and the weights (bayes; zero for the other heads)."""
        z = self.logits(h)
        if self.config.head == "bayes":
            logp, expected_entropy = self.bayes_predict(z, h)
        else:
            logp = self.head_log_probs(z, h)
        entropy = -(logp.exp() * logp).sum(-1)
        mi = entropy - expected_entropy if self.config.head == "bayes" else torch.zeros_like(entropy)
        return logp, entropy, mi

    @torch.no_grad()
    def uncertainty(self, idx):
        """`predictive` at every position of idx (B, T)."""
        return self.predictive(self.hidden(idx))

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
               stop_token=None, use_cache=True):
        """Yield the next token (B, 1) max_new_tokens times, each sampled given everything before it.

        Once the sequence is longer than block_size, the prediction is made from its last block_size tokens,
        exactly as a cache-free forward over that window (positions 0..block_size-1) would. Sliding the window
        changes the keys and values of tokens that stay in it, so a cache cannot be 'rolled': each step past
        block_size re-runs the whole window (the cache then saves nothing; it pays off for generations that
        fit in the context). Why they change:
        - learned positions: every token moves to a new position embedding, which changes its input and so
          every layer's keys and values.
        - rope: scores depend only on relative positions, and those survive the slide. In the first layer,
          values would not change, and keys only by one common rotation, which cancels if the new query is
          rotated by its position counted from the old window's start (block_size, not block_size - 1): that
          layer could be kept, up to rounding. The re-fill is needed because the window drops its oldest
          token: in every layer above, each cached key and value comes from a hidden state that attended to
          that token, which the window's forward no longer sees. Keeping them would compute sliding-window
          attention, whose reach grows with depth: another model, and not the cache-free one."""
        if not self.config.causal:
            raise ValueError("this model is bidirectional (a masked language model): it predicts the tokens at "
                             "<mask> positions, not the next one; use fill")
        bs = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if not use_cache:
                h = self.hidden(idx[:, -bs:])
            elif cache is None or cache.pos >= bs:  # (re)fill the cache from the last block_size tokens
                cache = KVCache(self.config)
                h = self.hidden(idx[:, -bs:], cache)
            else:
                h = self.hidden(idx[:, -1:], cache)
            h = h[:, -1]
            logp = self.head_log_probs(self.logits(h), h)  # (B, V)
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

    @torch.no_grad()
    def fill(self, idx, mask_id, vocab=None, temperature=1.0, top_k=None, top_p=None, greedy=False):
        """idx (B, T) with every mask_id replaced by a token, by a bidirectional model: one mask per step,
        the one the model is most sure of first. Each step predicts every remaining mask from the whole
        sequence, draws a token at each (greedy, temperature, top-k, top-p as in sampling) and keeps only the
        draw of highest probability; the kept token is context for the next step. n masks, n forward passes.

        Why not fill all masks from one pass: each would be drawn from its own distribution, blind to what
        the others become, and neighbours can then come from different words ('New Angeles' where 'New York'
        and 'Los Angeles' both fit). Most confident first settles the easy masks early and lets them
        constrain the hard ones. A trade-off, measured on Tiny Shakespeare (README): one pass, each position's
        own best guess, gets slightly more single tokens right; this gets whole masked spans right far more
        often. Only ids below `vocab` are ever filled in (default mask_id: the special tokens, <mask> first,
        come after the vocabulary)."""
        if self.config.causal:
            raise ValueError("fill needs a bidirectional model (trained with objective='mlm'); a causal model "
                             "continues text with generate")
        vocab = mask_id if vocab is None else vocab
        idx = idx.clone()
        while (masked := idx == mask_id).any():  # (B, T)
            row, col = masked.nonzero(as_tuple=True)  # every remaining mask
            logp = self.log_probs(idx)[row, col, :vocab]  # (N, vocab)
            tok = sample_next(logp, temperature, top_k, top_p, greedy)  # (N, 1)
            conf = torch.full(idx.shape, float("-inf"), device=idx.device)  # (B, T)
            conf[row, col] = logp.gather(1, tok).squeeze(1)  # log p of each draw under the model
            draw = torch.zeros_like(idx)
            draw[row, col] = tok.squeeze(1)
            best = conf.argmax(1)  # (B,): this row's most confident mask
            rows = masked.any(1).nonzero(as_tuple=True)[0]  # rows that still have one
            idx[rows, best[rows]] = draw[rows, best[rows]]
        return idx

    # --- GPT-2 weights in and out (HuggingFace transformers, imported only here) ----------------------------
    #
    # The parameter names are GPT-2's, so the conversion is one rule: HuggingFace stores the four projection
    # matrices as Conv1D weights of shape (in, out), nn.Linear as (out, in); those get transposed, the rest
    # is copied as is. lm_head is tied to wte in both.

    PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's, on the HuggingFace hub
    CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_pretrained(cls, name, **overrides):
        """GPT-2 from the HuggingFace hub ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or from a local folder
        written by save_pretrained. overrides: settings that leave the weights' shapes alone: dropout, the head
        (sigmoid and bayes start from the pretrained matrix, their own parameters at their init) and
        block_size (at most the model's 1,024: the position embeddings are cut to it)."""
        allowed = {"block_size", "dropout", "head", "bayes_prior_std", "bayes_init_std", "bayes_samples"}
        if set(overrides) - allowed:
            raise ValueError(f"from_pretrained can only change {', '.join(sorted(allowed))}, "
                             f"not {', '.join(sorted(set(overrides) - allowed))}")
        hf = _load_hf_gpt2(name)
        c = hf.config
        block_size = overrides.pop("block_size", c.n_positions)
        if block_size > c.n_positions:
            raise ValueError(f"block_size {block_size} is longer than {name}'s {c.n_positions} positions")
        model = cls(GPTConfig(block_size=block_size, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                              n_embd=c.n_embd, bias=True, **overrides))
        sd = {k: v.t() if k.endswith(cls.CONV1D) else v for k, v in hf.state_dict().items()
              if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # causal-mask buffers of older versions
        sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:block_size]
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or set(missing) - {"lm_bias", "lm_rho"}:
            raise ValueError(f"{name} does not fit GPT-2's layout (missing {missing}, unexpected {unexpected})")
        return model

    def export_hf(self, folder, eos_token_id=None):
        """Write this model as a HuggingFace GPT2LMHeadModel folder (config.json + model.safetensors), which
        `transformers.GPT2LMHeadModel.from_pretrained(folder)` and everything built on it can load. Only what
        GPT-2's architecture can express: the softmax head (bias=False exports as zero biases, which is the
        same function). The folder must not exist or be empty; it appears complete or not at all."""
        c = self.config
        if c.head != "softmax":
            raise ValueError(f"only the softmax head exists in GPT-2; this model's head is {c.head!r}")
        if (c.norm, c.mlp, c.pos) != ("layernorm", "gelu", "learned"):
            raise ValueError(f"GPT-2 has LayerNorm, a GELU MLP and learned positions; this model has norm={c.norm}, "
                             f"mlp={c.mlp}, pos={c.pos}")
        if not c.causal:
            raise ValueError("GPT-2 is causal; this model is bidirectional (a masked language model)")
        if os.path.isdir(folder) and os.listdir(folder) or os.path.isfile(folder):
            raise ValueError(f"{folder} exists and is not empty: choose a new folder")
        from transformers import GPT2Config, GPT2LMHeadModel
        hc = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                        tie_word_embeddings=True, bos_token_id=eos_token_id, eos_token_id=eos_token_id)
        hf = GPT2LMHeadModel(hc)
        ours = self.state_dict()
        sd = {k: (ours[k].t() if k.endswith(self.CONV1D) else ours[k]) if k in ours else torch.zeros_like(v)
              for k, v in hf.state_dict().items()}  # absent keys: biases of a bias=False model
        hf.load_state_dict({k: v.detach().float().cpu().contiguous() for k, v in sd.items()}, strict=True)
        tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(os.path.abspath(folder)))
        try:
            hf.save_pretrained(tmp, safe_serialization=True)
            if os.path.isdir(folder):
                os.rmdir(folder)  # empty (checked above)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _load_hf_gpt2(name):
    """transformers' GPT2LMHeadModel for a hub name or local folder, checked to be a plain GPT-2."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ImportError("GPT-2 weights need the transformers package: pip install transformers") from None
    try:
        hf = GPT2LMHeadModel.from_pretrained(name)
    except OSError as e:  # what transformers raises for "not found", offline included
        raise OSError(f"could not load GPT-2 weights {name!r}: {str(e).splitlines()[0][:300]}. Offline? Download "
                      f"once with internet (it is cached in ~/.cache/huggingface), then set HF_HUB_OFFLINE=1; "
                      f"or pass a local folder written by save_pretrained") from None
    c = hf.config
    plain = (c.activation_function in ("gelu_new", "gelu_pytorch_tanh") and c.n_inner in (None, 4 * c.n_embd)
             and c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx and c.layer_norm_epsilon == 1e-5
             and c.tie_word_embeddings)
    if not plain:
        raise ValueError(f"{name} is a GPT-2 variant this model does not implement (activation "
                         f"{c.activation_function}, n_inner {c.n_inner}, layer_norm_epsilon {c.layer_norm_epsilon}, tied output "
                         f"weights {c.tie_word_embeddings})")
    return hf.float()


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


def main(argv=None):
    """python model.py export OUT_DIR FOLDER: a checkpoint as a HuggingFace GPT-2 folder (see GPT.export_hf)."""
    import argparse

    from configurator import UserError
    from tokenizer import from_spec
    from train import build_model, load_checkpoint
    p = argparse.ArgumentParser(description="Export a softmax-head checkpoint as a HuggingFace GPT-2 model folder "
                                "(config.json + model.safetensors) for transformers.")
    p.add_argument("command", choices=["export"])
    p.add_argument("out_dir", help="the run's folder holding ckpt.pt, or a ckpt.pt file")
    p.add_argument("folder", help="where the model goes: a new or empty folder")
    args = p.parse_args(argv)
    path = args.out_dir if os.path.isfile(args.out_dir) else os.path.join(args.out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, args.out_dir)
    try:
        eot = from_spec(ckpt["tokenizer"]).eot_token  # generation in transformers stops there
    except (OSError, ValueError, TypeError):
        eot = None
    try:
        model.export_hf(args.folder, eos_token_id=eot)
    except (ImportError, ValueError, OSError) as e:
        raise UserError(f"cannot export: {e}") from None
    print(f"wrote {args.folder}: load it with transformers.GPT2LMHeadModel.from_pretrained({args.folder!r})")


if __name__ == "__main__":
    from configurator import main_guard
    main_guard(main)
