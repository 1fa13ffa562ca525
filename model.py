"""
GPT-2, top to bottom: attention, MLP, block, config, model; then where it runs (device and dtype).

The model maps a sequence of token ids to a score (logit) for every possible next token at every position:

    idx (B, T) -> token + position embeddings (B, T, C) -> n_layer x Block -> LayerNorm -> head -> (B, T, V)

Each Block is pre-LayerNorm with two residual branches, x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)), so the
residual stream carries the embedding through unchanged and every layer adds a correction to it.
The parameter names are GPT-2's own (wte, wpe, h.0.attn.c_attn, ...) so importing real weights is a table.

Switches in GPTConfig, each on its own (the defaults are GPT-2, exactly): LLaMA's norm='rmsnorm',
mlp='swiglu' and pos='rope'; causal=False for a masked language model that sees the whole sequence; and
head, the output head (heads.py). A batch of sequences of different lengths is padded on the right and comes
with an attention_mask (B, T), true at real tokens: padding is never attended to and never a target.
`log_probs` gives *normalised* next-token log-probabilities for every head: sampling (generate.py) and
evaluation score only through it, so every head is compared on the same footing.
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import UserError
from configurator import check_value
from heads import HEADS


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
            # (B, nh, L, hs): the cached past followed by these T positions, and who sees whom among them
            k, v, mask = cache.append(k, v)
            causal = T > 1 and mask is None  # None: plain causal over T > 1 new tokens, or one query sees all
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


@dataclass
class ModelSettings:
    """What a training config chooses of the model (train.TrainConfig has these fields); GPTConfig adds what
    the data and the run decide. The defaults are GPT-2 124M's."""
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in every Linear and norm layer, as GPT-2 has them
    # architecture switches: each on its own, GPT-2's by default, LLaMA's parts as the alternatives
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # ln_1, ln_2, ln_f; rmsnorm: rescale only, no centring
    mlp: Literal["gelu", "swiglu"] = "gelu"  # gelu: 4 * n_embd wide; swiglu: gated, ~8/3 * n_embd (same parameters)

    # swiglu's hidden width is rounded up to a multiple of this, for matmul-friendly shapes. LLaMA uses 256 at
    # n_embd 4096 (10,923 -> 11,008, +0.8%); at n_embd 128 that would make 341 into 512, 64 makes it 384
    mlp_multiple: int = 64
    pos: Literal["learned", "rope"] = "learned"  # learned: wpe, added to the input; rope: q and k rotated
    rope_theta: float = 10000.0  # rope: the pairs of a head turn from 1 to ~1/rope_theta radians per position
    # output head
    head: str = "softmax"  # a name in heads.HEADS: 'softmax', 'sigmoid' or 'bayes'
    bayes_prior_std: float = 1.0  # bayes: prior N(0, bayes_prior_std^2) on every output weight
    bayes_init_std: float = 3e-3  # bayes: posterior std at init (logit noise ~ this * |h|, well under 1)
    bayes_samples: int = 10  # bayes: weight draws averaged for a prediction (evaluation, sampling)


@dataclass
class GPTConfig(ModelSettings):
    block_size: int = 1024  # longest context the model sees (learned position embeddings exist only this far)
    vocab_size: int = 50257  # tokens the model reads and predicts (GPT-2's 50,257)
    # the embedding/output matrix has vocab_size rows rounded up to a multiple of this (64 on GPUs: 50,304 rows,
    # tensor-core shapes); no token has the extra ids, and their logits are cut off before anything sees them
    vocab_multiple: int = 1
    # True: each position sees only the past, and its logits predict the *next* token (GPT). False: every
    # position sees the whole sequence, and its logits predict the token *at* that position (a masked language
    # model, BERT-style: trained to recover <mask>ed tokens; train.py objective='mlm')
    causal: bool = True

    def __post_init__(self):
        for f in fields(self):  # each value of its type, and one of its choices (Literal), as configure() checks
            try:
                check_value(f.name, getattr(self, f.name), f.type)
            except UserError as e:
                raise ValueError(str(e)) from None
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose {' or '.join(HEADS)}")
        HEADS[self.head](self)  # the head checks what it needs of the config
        if self.bayes_prior_std <= 0 or self.bayes_init_std <= 0 or self.bayes_samples < 1:
            raise ValueError("bayes_prior_std and bayes_init_std must be > 0 and bayes_samples >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.mlp_multiple < 1 or self.vocab_multiple < 1:
            raise ValueError(f"mlp_multiple and vocab_multiple must be at least 1, got {self.mlp_multiple}, "
                             f"{self.vocab_multiple}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope rotates pairs of dimensions: the head size n_embd / n_head = "
                             f"{self.n_embd // self.n_head} must be even")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta}")

    @property
    def padded_vocab(self):
        """Rows of the embedding and output matrix: vocab_size rounded up to a multiple of vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab, config.n_embd),  # token embeddings
            # learned position embeddings; none with rope, where positions act inside attention
            wpe=nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab, bias=False)
        # weight tying: the output layer scores token j by the dot product with j's input embedding, so one
        # matrix learns what a token means both as input and as prediction (and 38M fewer parameters in GPT-2)
        self.transformer.wte.weight = self.lm_head.weight
        self.head = HEADS[config.head](config)  # heads.py: what turns the final hidden states into predictions
        own = self.head.params()
        for name, p in own.items():
            self.register_parameter(name, p)
        self.head_params = tuple(own)  # their names: no weight decay, and none in GPT-2's weights
        if config.pos == "rope":
            # buffers, not parameters, and not in state_dict (persistent=False): they follow from the config,
            # and checkpoints stay free of tables that only depend on block_size
            hs = config.n_embd // config.n_head
            cos, sin = rope_tables(hs, config.rope_theta, config.block_size)  # (block_size, hs/2)
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
        position is asked for (a block_size raised after construction: RoPE has no learned table to cap it).
        A tensor start (generate's static cache) is looked up, not sliced: the tables are long enough there."""
        if torch.is_tensor(start):
            pos = start + torch.arange(T, device=start.device)
            return self.rope_cos[pos], self.rope_sin[pos]
        if start + T > self.rope_cos.size(0):
            cos, sin = rope_tables(self.config.n_embd // self.config.n_head, self.config.rope_theta,
                                   max(start + T, self.config.block_size), self.rope_cos.device)
            self.rope_cos, self.rope_sin = cos, sin  # still buffers, still not saved
        return self.rope_cos[start:start + T], self.rope_sin[start:start + T]

    def attn_mask(self, attention_mask):
        """Who sees whom, (B, 1, T, T) bool, from attention_mask (B, T), true at real tokens: query i sees key j if
        j is a real token and, for a causal model, j <= i. Every query also sees itself, so that no row of the
        softmax is over nothing (0 / 0 = NaN; docs/design.md, "Padding on the right"). Pad on the right: real
        tokens keep their positions 0..L-1, and a padded row gives the same outputs as the sequence alone."""
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
        start = cache.pos if cache is not None else 0  # a tensor (1,) in generate's static cache (fixed shapes)
        if not torch.is_tensor(start) and start + T > self.config.block_size:  # (static: only inside the context)
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
            pos = start + torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, rope, mask)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    # --- the output head: self.head (heads.py) does the work ------------------------------------------------

    def logits(self, h):
        """The head's logits (B, T, V) for hidden states h (B, T, C); for bayes, those of the mean weights."""
        return self.outputs(h)[0]

    def outputs(self, h):
        """The head's logits, and the output layer's own (B, T, Vpad) with the padded rows' (vocab_multiple)
        still on where the head's logits are just those, cut (softmax, bayes; else None): a loss that writes its
        gradient in the padded shape saves the copy that cutting costs in backward (heads.FusedCE)."""
        zpad = self.lm_head(h)  # over the padded rows too (tensor-core shapes), though no token has their ids
        V = self.config.vocab_size
        z = zpad if zpad.size(-1) == V else zpad[..., :V]
        logits = self.head.logits(self, z)
        # not in a compiled model: its graph does the cut's backward itself, and a graph break (bayes) that hands
        # over both the logits and their base made torch 2.13 replay the view from freed memory (a crash)
        return logits, (zpad if logits is z and not torch.compiler.is_compiling() else None)

    def head_loss(self, logits, targets, h=None, target_sets=None, zpad=None):
        """Mean loss per predicted token (nats), targets of -1 ignored, in fp32; 0 when every target is ignored
        (a masked-LM batch that chose no position), not 0 / 0. target_sets (heads with sets, e.g. sigmoid):
        (rows, cols), a set of right answers per token instead of the next one alone (rows index the B*T).
        zpad: the uncut logits where the head's are their cut (GPT.outputs)."""
        if target_sets is not None and not self.head.sets:
            raise ValueError(f"target_sets are for a head with sets (the sigmoid head); the {self.config.head} head "
                             f"has one right answer per token")
        z, y = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
        n = (y != -1).sum().clamp_min(1)  # the tokens that count
        h = None if h is None else h.reshape(-1, h.size(-1))
        zpad = None if zpad is None else zpad.reshape(-1, zpad.size(-1))
        return self.head.loss(self, z, y, h, target_sets, zpad=zpad) / n

    def head_log_probs(self, logits, h=None, samples=None):
        """Normalised next-token log-probabilities (fp32: bf16 would round them coarsely)."""
        return self.head.log_probs(self, logits, h, samples)

    def predictive(self, h):
        """From hidden states h: the normalised log-probabilities (..., V), the predictive entropy and the
        mutual information between the next token and the weights (zero for a head without weight draws)."""
        return self.head.predictive(self, self.logits(h), h)

    # ------------------------------------------------------------------------------------------------------

    def forward(self, idx, targets=None, attention_mask=None, target_sets=None):
        """Logits (B, T, V) at every position and, given targets (B, T), the mean loss over the targets that
        are not -1 (else None). attention_mask (B, T), true at real tokens and false at padding: padded
        positions are never looked at and are never targets, whatever `targets` holds there. target_sets:
        sets of right answers for the sigmoid head (head_loss)."""
        h = self.hidden(idx, attention_mask=attention_mask)
        logits, zpad = self.outputs(h)
        if targets is not None and attention_mask is not None:
            targets = targets.masked_fill(~attention_mask.bool(), -1)
        loss = self.head_loss(logits, targets, h, target_sets, zpad) if targets is not None else None
        return logits, loss

    def log_probs(self, idx, attention_mask=None):
        """Normalised log-probabilities at every position: (B, T, V), of the next token given the prefix
        (causal), or of the token at that position given the whole sequence (causal=False). Everything that
        scores or samples goes through here, so every head is compared on the same footing."""
        h = self.hidden(idx, attention_mask=attention_mask)
        return self.head_log_probs(self.logits(h), h)


# --- where it runs: the two settings every script resolves alike ---------------------------------------------

def pick_device(name):
    """'auto': cuda, then mps, then cpu; anything else as given."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


Dtype = Literal["auto", "float32", "bfloat16", "float16"]  # the scripts' dtype setting


def pick_dtype(name, device):
    """'auto': bfloat16 on a GPU that has it, else float16 on cuda, else float32. A bad name is a ValueError."""
    if name == "auto":
        if device.startswith("cuda"):
            # bf16 in hardware from Ampere (compute capability 8.0) on; torch.cuda.is_bf16_supported() also
            # counts the slow emulation of older GPUs, where float16 with a GradScaler is the fast choice
            return "bfloat16" if torch.cuda.get_device_capability(device)[0] >= 8 else "float16"
        return "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {name!r}")
    return name


def allow_tf32(device):
    """On CUDA, float32 matmuls in TF32 (10-bit mantissa, float32's range): ~8x faster on Ampere and later."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # torch >= 2.9's API, which replaces allow_tf32


def autocast(device, dtype):
    """Mixed precision for float16/bfloat16: matmuls in half precision, reductions and the loss in fp32."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))
