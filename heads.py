"""
The output heads: how the final hidden states become a training loss and a next-token distribution.

    softmax  p(y) = exp(z_y) / sum_j exp(z_j); loss -log p(y), the cross-entropy (GPT-2's head)
    sigmoid  each token j its own yes/no, P(j follows) = sigma(z_j); loss: binary cross-entropy summed over
             the vocabulary (one "yes", V-1 "no"s); as one distribution, p(y) = sigma(z_y) / sum_j sigma(z_j)
    bayes    a Gaussian over every output weight, W ~ q(W) = N(mu, sigma^2); trained on one draw per token plus
             KL(q || prior) / N, predicting with the average of several draws' softmax

For each: first the plain formula, a few lines that autograd differentiates. Then, where it pays, a fast autograd
Function with the gradient written out, whose docstring says what it saves; tests/test_heads.py checks that both
give the same values and gradients. Then the loss as a GPU runs it: two steps in plain torch ops that
torch.compile fuses into one kernel each (tests/test_fused.py). At the bottom, each head is a class behind one
small interface (parameters, training loss and regulariser, log-probabilities, the predictive distribution);
HEADS names them, and model.py calls the chosen one. A new head is one class there (docs/heads.md shows one).

Precision: every loss here is computed in float32, whatever autocast says (each casts the logits it gets, bf16
under autocast, to fp32 as it reads them, and the regions below marked fp32() switch autocast off). The bayes
head's variances are the reason: a weight's sigma^2 of 1e-6 times h^2 is below float16's smallest normal number
(6e-5), so under float16 autocast the noise would vanish, or the loss turn inf and the GradScaler skip every
step. bfloat16 has float32's exponent range, so under bfloat16 autocast the bayes head's three (N x C) x (C x V)
variance matmuls take bf16 inputs (accumulating in fp32), as every other matmul of the step does; everything
after them stays fp32.
"""

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


def fp32(x):
    """A region where autocast is off, so the matmuls on x's device run in the dtype given (here float32)."""
    return torch.autocast(x.device.type, enabled=False)


def matmul_dtype(x):
    """bfloat16 under bfloat16 autocast on x's device, else float32 (see the top of this file for float16)."""
    t = x.device.type
    bf16 = torch.is_autocast_enabled(t) and torch.get_autocast_dtype(t) == torch.bfloat16
    return torch.bfloat16 if bf16 else torch.float32


def mm(a, b, dtype):
    """a @ b from inputs in dtype, the result in fp32."""
    return (a.to(dtype) @ b.to(dtype)).float()


# --- softmax ----------------------------------------------------------------------------------------------


def softmax_log_probs(z):
    """Normalised log-probabilities (..., V) from logits z (fp32)."""
    return F.log_softmax(z, dim=-1)


# --- sigmoid / binary cross-entropy -------------------------------------------------------------------------


def sigmoid_bce_reference(z, rows, cols):
    """Per token, BCE summed over the vocabulary against a multi-hot target: logits z (N, V) and each token's set
    of right answers as (rows, cols) pairs, one (token, id) per member (the next token alone: rows = 0..N-1)."""
    target = torch.zeros_like(z)
    target[rows, cols] = 1
    return F.binary_cross_entropy_with_logits(z, target, reduction="none").sum(-1)  # (N,)


class SigmoidBCE(torch.autograd.Function):
    """Same values and gradients as sigmoid_bce_reference. -log sigma(z) = softplus(z) - z and -log(1 - sigma(z))
    = softplus(z), so the loss is sum_j softplus(z_j) - sum_{j in S} z_j: one pass, no dense target. Its gradient
    sigma(z) - multihot(S) is written out, so backward builds one (N, V) tensor, as cross-entropy's does."""

    @staticmethod
    def forward(ctx, z, rows, cols):
        ctx.save_for_backward(z, rows, cols)
        hits = torch.zeros(len(z), dtype=z.dtype, device=z.device).index_add_(0, rows, z[rows, cols])
        return F.softplus(z).sum(-1) - hits

    @staticmethod
    def backward(ctx, g):
        z, rows, cols = ctx.saved_tensors
        grad = torch.sigmoid(z)
        grad.index_put_((rows, cols), z.new_full((), -1.0), accumulate=True)  # no host-to-device copy
        return grad.mul_(g[:, None]), None, None


def sigmoid_log_probs(z):
    """log(sigma(z) / sum_j sigma(z_j)), normalised over the vocabulary."""
    ls = F.logsigmoid(z)
    return ls - ls.logsumexp(-1, keepdim=True)


# --- bayes: a Gaussian last layer ---------------------------------------------------------------------------
# Logits z_j = h . w_j with independent w_jc ~ N(mu_jc, sigma_jc^2) are Gaussian themselves: mean h . mu_j,
# variance sum_c h_c^2 sigma_jc^2. Drawing logits from that (the local reparameterisation trick) has the same
# distribution as drawing W and multiplying, without ever making a (V, C) weight sample.


def logit_std(h, rho):
    """The standard deviation of each logit (..., V) for hidden states h (..., C); sigma = softplus(rho). In fp32
    (see the top of this file)."""
    with fp32(h):
        return (h.float().square() @ F.softplus(rho.float()).square().t()).clamp_min(1e-20).sqrt()


def sampled_ce_reference(z, h, rho, y, eps):
    """bayes training loss per token: the cross-entropy of one draw of the logits, s = z + std * eps, for mean
    logits z (N, V), hidden states h (N, C), the weights' rho (V, C), targets y (N,) and noise eps (N, V)."""
    return F.cross_entropy(z + logit_std(h, rho) * eps, y, reduction="none")


# The fast versions go through their (N, V) or (V, C) tensors a block of rows at a time: what is needed only on
# the way (the noise, the draw, sigma) lives in one block-sized buffer, and only the results exist at full size.
# Written as plain torch ops they make a dozen full-size temporaries, and on a CPU each fresh tensor this size
# costs a pass of page faults besides its own writes (docs/design.md, "Output heads").

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
    """Same values and gradients as sampled_ce_reference (with h2 = h^2 given, and eps drawn here, one (rows, V)
    block at a time). Gradients, written out:
        dL/dz = softmax(s) - onehot(y)          dL/dv = dL/dz * eps / (2 sqrt(v))       (v = z's variance)
        dL/dh2 = (dL/dv) s2                     dL/drho = ((dL/dv)^T h2) * 2 sigma * sigmoid(rho)
    Both (N, V) gradients are made in forward, where each block's draw is at hand, in the memory of v and of
    one other tensor; backward scales them by the incoming gradient and does the matmuls."""

    @staticmethod
    def forward(ctx, z, h2, rho, y):  # z: fp32 logits, h2 = h^2, in fp32 but the matmuls (see the top of this file)
        ctx.dtype = matmul_dtype(z)  # backward runs outside autocast: it does as forward did
        with fp32(z):
            return SampledCE.draw(ctx, z.float(), h2.float(), rho, y)

    @staticmethod
    def draw(ctx, z, h2, rho, y):
        s2 = F.softplus(rho.float()).square_()
        gv = mm(h2, s2.t(), ctx.dtype)  # the variances v, then dL/dv in the same memory
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
        with fp32(gz):
            gz.mul_(g[:, None])
            gv = gv.mul_(g[:, None]).to(ctx.dtype)  # cast once for both matmuls
            grad_h2 = mm(gv, s2, ctx.dtype)
            grad_rho = mm(gv.t(), h2, ctx.dtype)
        sigma = s2.sqrt_()  # d sigma / d rho = sigmoid(rho) = 1 - exp(-sigma), as softplus(rho) = log(1 + e^rho)
        grad_rho.mul_(sigma).mul_(2).mul_(sigma.neg_().expm1_().neg_())
        return gz, grad_h2, grad_rho, None

    @staticmethod
    @torch.compiler.disable
    def run(z, h2, rho, y):
        """apply, always eager: traced into a compiled model, the block loop's in-place writes became copies of
        the whole (N, V) tensors, block after block (~50 logits tensors of memory on a CPU, 3.2x softmax's peak on
        a GPU), so a compiled model breaks its graph here and runs this Function as written."""
        return SampledCE.apply(z, h2, rho, y)


def gaussian_kl_reference(mu, rho, sp):
    """KL(N(mu, sigma^2) || N(0, sp^2)) summed over the weights, sigma = softplus(rho), in closed form:
    log(sp / sigma) + (sigma^2 + mu^2) / (2 sp^2) - 1/2 per weight."""
    sigma = F.softplus(rho.float())
    return (math.log(sp) - sigma.log() + (sigma.square() + mu.float().square()) / (2 * sp ** 2) - 0.5).sum()


class GaussianKL(torch.autograd.Function):
    """Same values and gradients as gaussian_kl_reference: dKL/dmu = mu / sp^2, dKL/drho = (sigma / sp^2 -
    1 / sigma) sigmoid(rho). sum mu^2 is one dot product; softplus(rho) = logaddexp(rho, 0), written into a
    block-sized buffer."""

    @staticmethod
    def forward(ctx, mu, rho, sp):
        ctx.save_for_backward(mu, rho)
        ctx.sp = sp
        mu32, zero = mu.float().flatten(), rho.new_zeros((), dtype=torch.float32)
        with fp32(mu):  # the dot products: sums over millions of weights
            kl = (mu32 @ mu32) / (2 * sp ** 2) + rho.numel() * (math.log(sp) - 0.5)
            blocks = row_blocks(rho)
            buf = scratch(rho, blocks)
            for b in blocks:
                sigma = torch.logaddexp(rho[b].float(), zero, out=buf[:len(rho[b])]).flatten()
                kl = kl + (sigma @ sigma) / (2 * sp ** 2) - sigma.log_().sum()
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


def bayes_predict(z, std, samples):
    """(log of the mean predictive probability, expected entropy) over `samples` draws of the logits, mean z and
    std (..., V). Averaging is in probability space, log (1/S) sum_s p_s = logsumexp_s log p_s - log S, and
    the predictive entropy H[mean p] = E[H[p_s]] + mutual information (how much the draws disagree)."""
    acc, ent = None, 0.0
    for _ in range(samples):  # one draw at a time: memory stays a few (..., V) tensors whatever S is
        lp = F.log_softmax(z + std * torch.randn_like(z), dim=-1)
        ent = ent - (lp.exp() * lp).sum(-1) / samples
        acc = lp if acc is None else torch.logaddexp(acc, lp)
    return acc - math.log(samples), ent


# --- on a GPU: the loss in two fused passes ------------------------------------------------------------------
# Run op by op, every step of the formulas above is a pass over an (N, V) tensor. At GPT-2's shape N x V is 618M
# elements, one bf16 tensor of them 1.24 GB (~0.3 ms to move on an H200); the blocked bayes loss read and wrote
# ~78 such tensors' worth, softmax's cross-entropy (with the cast to fp32 and the cut-off padding) ~22
# (docs/heads.md counts them). The math needs two: a reduction in forward (each row's logsumexp) and a pointwise
# pass in backward (the gradients, from the logits again). Written as the plain torch ops of those two steps,
# torch.compile fuses each into one kernel that reads the bf16 logits and writes their bf16 gradient straight into
# the padded (N, Vpad) shape, keeping no fp32 (N, V) tensor for backward. On by device (FUSED); the CPU keeps the
# blocked code above, bit for bit.

FUSED = ("cuda",)  # device types whose eager training takes the fused loss (tests add "cpu")


def fusing(z):
    """Whether this loss takes the fused path: on a device in FUSED, in an eager model (a compiled model's graph
    fuses the plain formula itself)."""
    return z.device.type in FUSED and not torch.compiler.is_compiling()


def drawn(z, V, v=None, eps=None):
    """The logits the loss sees, in fp32, (N, Vpad) as z: z itself, or for bayes one draw z + sqrt(v) eps (v each
    logit's variance, eps (N, V) its standard normal noise); the padded ids (V and up) at -inf, out of the softmax.
    One shape throughout, so each step below is one loop over it."""
    s = z.float()
    if v is not None:
        s = s + F.pad(eps.float(), (0, z.size(1) - V)) * v.float().clamp_min(1e-20).sqrt()
    return s.masked_fill(torch.arange(z.size(1), device=z.device) >= V, -math.inf)


def ce_forward(z, y, V, v=None, eps=None):
    """Each row's logsumexp of the drawn logits s, and s at the target: the loss is their difference."""
    s = drawn(z, V, v, eps)
    return s.logsumexp(-1), s.gather(1, y[:, None]).squeeze(1)


def ce_backward(z, y, lse, g, V, v=None, eps=None):
    """dL/dz in z's dtype (0 at the padded ids), and for bayes dL/dv in v's dtype: dL/ds = (softmax(s) -
    onehot(y)) g, dL/dz = dL/ds, dL/dv = dL/ds eps / (2 sqrt(v))."""
    s = drawn(z, V, v, eps)
    ds = ((s - lse[:, None]).exp() - (torch.arange(z.size(1), device=z.device) == y[:, None]).float()) * g[:, None]
    if v is None:
        return ds.to(z.dtype), None
    eps = F.pad(eps.float(), (0, z.size(1) - V))
    return ds.to(z.dtype), (ds * eps / (2 * v.float().clamp_min(1e-20).sqrt())).to(v.dtype)


_fused = {}


def fused(fn, *args):
    """fn(*args) through torch.compile, or eagerly (the same values, more passes) where compiling fails, e.g.
    without Triton or a C++ compiler: a warning once, and training goes on."""
    f = _fused.get(fn) or _fused.setdefault(fn, torch.compile(fn))
    if f is not fn:
        try:
            return f(*args)
        except Exception as e:  # what compiling raises varies by backend; a real error repeats eagerly below
            warnings.warn(f"heads.{fn.__name__}: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); "
                          f"running it eagerly, correct but slower")
            _fused[fn] = fn
    return fn(*args)


class FusedCE(torch.autograd.Function):
    """Per token, the cross-entropy of the drawn logits s = drawn(z, V, v, eps) for targets y (N,) in 0..V-1:
    the values and gradients of F.cross_entropy(s, y), with z's gradient in z's own padded shape and dtype.
    Saves z, v, eps (in their own dtypes) and N logsumexps; backward computes the softmax again from them."""

    @staticmethod
    def forward(ctx, z, y, V, v=None, eps=None):
        lse, sy = fused(ce_forward, z, y, V, v, eps)
        ctx.save_for_backward(z, y, lse, v, eps)
        ctx.V = V
        return lse - sy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        z, y, lse, v, eps = ctx.saved_tensors
        dz, dv = fused(ce_backward, z, y, lse, g.float(), ctx.V, v, eps)
        return dz, None, None, dv, None


@torch.compiler.disable  # a compiled model breaks its graph here and runs this as an eager GPU run does
def fused_sampled_ce(z, h, rho, y, V):
    """bayes training loss per token on the fused path, z (N, Vpad) the mean logits with padding. The variances
    v = h^2 (sigma^2)^T are one matmul that autograd differentiates (in bf16 under bf16 autocast, see the top of
    this file); the noise is drawn and kept in v's dtype (bf16 under bf16 autocast: half the memory)."""
    dtype = matmul_dtype(z)
    s2 = F.pad(F.softplus(rho.float()).square(), (0, 0, 0, z.size(1) - V))  # 0 for the padded ids: z's shape
    with fp32(z):
        v = h.float().square().to(dtype) @ s2.t().to(dtype)
    return FusedCE.apply(z, y, V, v, torch.randn((len(z), V), device=z.device, dtype=dtype))


# --- the heads: what model.py calls ---------------------------------------------------------------------------
# One object per model (GPT.head). Its parameters are registered on the model itself, so a checkpoint's keys stay
# lm_bias and lm_rho, and every method gets the model as m to reach them. z: the head's logits (N, V), in the
# model's dtype (bf16 under autocast: a loss casts what it needs to fp32), h: hidden states (N, C), y: targets (N,)
# with -1 at the tokens that do not count. plain=True: the reference formula. zpad: the output layer's logits
# with the padded ids still on (N, Vpad), given only where z is just their cut (GPT.outputs), else None.


class Softmax:
    """GPT-2's head: p = softmax(z), trained with the cross-entropy. The other heads change what differs.
    Making one checks the model config (a ValueError), so GPTConfig makes one to check itself."""
    sets = False  # can train on a set of right answers per token (data.py's sigmoid_targets='ngram')
    draws = False  # predicts by averaging weight draws: evaluate adds the NLL by draws and the mutual information
    gpt2 = True  # computes what GPT-2 does: only such a head exports as a HuggingFace GPT-2 (checkpoint.py)
    fused = True  # its training loss runs fused on the devices in FUSED (bench.py's GPU grid times it unfused too)

    def __init__(self, config):
        self.config = config

    def params(self):
        """The head's own parameters by name, at their init (registered on the model)."""
        return {}

    def logits(self, m, z):
        """Logits from the output layer's z = h W^T (..., V)."""
        return z

    def loss(self, m, z, y, h, sets=None, plain=False, zpad=None):
        """The training loss summed over the tokens that count (model.py divides by their number)."""
        if not plain and fusing(z):
            return (FusedCE.apply(z if zpad is None else zpad, y.clamp_min(0), z.size(1)) * (y != -1)).sum()
        return F.cross_entropy(z.float(), y, ignore_index=-1, reduction="sum")  # torch's own: plain, and fast on a CPU

    def regulariser(self, m, plain=False):
        """A term added to the loss once per step, per training token (train.py), or None."""
        return None

    def log_probs(self, m, z, h, samples=None):
        """Normalised next-token log-probabilities (..., V), fp32 (bf16 would round them coarsely)."""
        return softmax_log_probs(z.float())

    def predictive(self, m, z, h, samples=None):
        """(log-probabilities, predictive entropy, mutual information between the token and the weights)."""
        logp = self.log_probs(m, z, h, samples)
        entropy = -(logp.exp() * logp).sum(-1)
        return logp, entropy, torch.zeros_like(entropy)

    def in_set(self, m, z, h):
        """Per token id, the probability that it is *a* right answer (evaluate's set scores): here p itself."""
        return self.log_probs(m, z, h).exp()

    def scores(self, m, z, y, h):
        """Sums over the tokens that count of what evaluate reports for this head alone, by name."""
        return {}


class Sigmoid(Softmax):
    """Each token its own yes/no, sigma(z_j); BCE summed over the vocabulary; as one distribution,
    sigma(z_y) / sum_j sigma(z_j)."""
    sets, gpt2, fused = True, False, False

    def __init__(self, config):
        if config.vocab_size < 2:
            raise ValueError("the sigmoid head needs vocab_size >= 2")
        self.config = config

    def params(self):
        # a bias per token, starting at logit(1/V) = -log(V-1): every sigmoid starts at 1/V, the same "any token,
        # equally" as softmax at init; without it each of V sigmoids starts at 1/2, and the first steps are spent
        # pushing V-1 of them down
        V = self.config.vocab_size
        return {"lm_bias": nn.Parameter(torch.full((V,), -math.log(V - 1)))}  # V: the padding has none

    def logits(self, m, z):
        # the bias in z's dtype: under autocast, adding an fp32 bias would make a second, fp32 (..., V) tensor
        return z + m.lm_bias.to(z.dtype)

    def loss(self, m, z, y, h, sets=None, plain=False, zpad=None):
        z, (rows, cols) = z.float(), sets or (torch.arange(len(y), device=y.device), y.clamp_min(0))
        bce = sigmoid_bce_reference(z, rows, cols) if plain else SigmoidBCE.apply(z, rows, cols)
        return (bce * (y != -1)).sum()

    def log_probs(self, m, z, h, samples=None):
        return sigmoid_log_probs(z.float())

    def in_set(self, m, z, h):
        return torch.sigmoid(z.float())  # each token's own yes/no

    def scores(self, m, z, y, h):
        keep = y != -1
        return {"bce": self.loss(m, z, y, h).item(),  # the next token as the one right answer
                "sum_sigma": torch.sigmoid(z.float()).sum(-1)[keep].sum().item()}


class Bayes(Softmax):
    """A Gaussian over every output weight, q(W) = N(mu, sigma^2), mu the tied lm_head matrix; trained on one draw
    per token plus KL(q || prior); predicts with the average of several draws' softmax."""
    draws, gpt2 = True, False

    def params(self):
        # sigma = softplus(rho) > 0. mu *is* the tied lm_head/wte matrix: with sigma -> 0 this is the softmax head,
        # the parameter count differs from it only by rho, and pretrained output weights are the mean to start from
        c = self.config
        return {"lm_rho": nn.Parameter(torch.full((c.vocab_size, c.n_embd), math.log(math.expm1(c.bayes_init_std))))}

    def loss(self, m, z, y, h, sets=None, plain=False, zpad=None):
        if not m.training:  # what we report: the NLL of the averaged prediction, never with the KL
            return F.nll_loss(self.log_probs(m, z, h), y, ignore_index=-1, reduction="sum")
        # one draw of every logit: unbiased for E_q[CE]
        if plain:
            z = z.float()
            ce = sampled_ce_reference(z, h, m.lm_rho, y.clamp_min(0), torch.randn_like(z))
        elif z.device.type in FUSED:  # also in a compiled model, which breaks its graph there
            ce = fused_sampled_ce(z if zpad is None else zpad, h, m.lm_rho, y.clamp_min(0), z.size(1))
        else:
            ce = SampledCE.run(z, h.float().square(), m.lm_rho, y.clamp_min(0))
        return (ce * (y != -1)).sum()

    def regulariser(self, m, plain=False):
        """KL(q(W) || N(0, bayes_prior_std^2)) summed over the output weights."""
        mu = m.lm_head.weight[:self.config.vocab_size]
        kl = gaussian_kl_reference if plain else GaussianKL.apply
        return kl(mu, m.lm_rho, self.config.bayes_prior_std)

    def draw(self, m, z, h, samples=None):
        """(log of the mean predictive probability, expected entropy) over the draws (bayes_predict)."""
        return bayes_predict(z.float(), logit_std(h, m.lm_rho).float(), samples or self.config.bayes_samples)

    def log_probs(self, m, z, h, samples=None):
        return self.draw(m, z, h, samples)[0]

    def predictive(self, m, z, h, samples=None):
        logp, expected_entropy = self.draw(m, z, h, samples)
        entropy = -(logp.exp() * logp).sum(-1)
        return logp, entropy, entropy - expected_entropy


HEADS = {"softmax": Softmax, "sigmoid": Sigmoid, "bayes": Bayes}  # GPTConfig.head names one of these
