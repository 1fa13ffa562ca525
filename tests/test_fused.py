# The fused loss (heads.FusedCE: what a GPU trains softmax and bayes with), run here on the CPU through the same
# torch.compile, against torch's own cross-entropy and heads.py's plain formulas: fp32 equal up to rounding, bf16
# within bf16's, with padded vocabularies. The same on a real GPU: tests/test_cuda.py.
import math

import pytest
import torch
import torch.nn.functional as F

import heads
from conftest import ops_seen, run_script
from model import GPT, GPTConfig

N, V, VPAD = 48, 61, 64


def logits_and_targets(dtype):
    torch.manual_seed(0)
    z = (3 * torch.randn(N, VPAD)).to(dtype).requires_grad_()
    y = torch.randint(V, (N,))
    y[:5] = -1  # tokens that do not count
    return z, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_cross_entropy_is_torchs_with_the_padding_cut_off(dtype):
    z, y = logits_and_targets(dtype)
    loss = (heads.FusedCE.apply(z, y.clamp_min(0), V) * (y != -1)).sum()
    loss.backward()
    zf = z.detach().float()[:, :V].requires_grad_()  # the same values, cut and in fp32: torch's own loss
    ref = F.cross_entropy(zf, y, ignore_index=-1, reduction="sum")
    ref.backward()
    assert loss.dtype == torch.float32 and torch.allclose(loss, ref, rtol=1e-6)
    assert z.grad.dtype == dtype and z.grad.shape == (N, VPAD)  # the gradient in the padded shape itself
    assert torch.equal(z.grad[:, V:], torch.zeros(N, VPAD - V, dtype=dtype))  # the padded ids: never in a softmax
    assert torch.equal(z.grad[:5], torch.zeros(5, VPAD, dtype=dtype))  # the ignored tokens
    want = zf.grad.to(dtype).float()  # fp32 math, one rounding to z's dtype at the end
    rtol = 2 ** -7 if dtype == torch.bfloat16 else 1e-5  # a bf16 ulp: fp32 values by a rounding boundary
    assert torch.allclose(z.grad[:, :V].float(), want, rtol=rtol, atol=1e-7)


def bayes_inputs():
    torch.manual_seed(0)
    C = 16
    z = torch.randn(N, VPAD, requires_grad=True)
    h = torch.randn(N, C, requires_grad=True)
    rho = torch.full((V, C), math.log(math.expm1(0.05))).add_(0.3 * torch.randn(V, C)).requires_grad_()
    return z, h, rho, torch.randint(V, (N,))


def bayes_loss(z, h, rho, y, ctx, fused):
    for t in (z, h, rho):
        t.grad = None
    torch.manual_seed(1)  # the same noise: both paths draw one (N, V) normal tensor
    with ctx:
        if fused:
            ce = heads.fused_sampled_ce(z, h, rho, y, V)
        else:
            zc = z[:, :V]
            ce = heads.sampled_ce_reference(zc, h, rho, y, torch.randn_like(zc))
    ce.sum().backward()
    return ce.detach(), z.grad[:, :V].float(), h.grad.clone(), rho.grad.clone()


def test_the_fused_bayes_loss_is_the_plain_formula_in_fp32():
    z, h, rho, y = bayes_inputs()
    off = torch.autocast("cpu", enabled=False)
    for a, b in zip(bayes_loss(z, h, rho, y, off, True), bayes_loss(z, h, rho, y, off, False)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
    assert torch.equal(z.grad[:, V:], torch.zeros(N, VPAD - V))


def test_the_fused_bayes_loss_under_autocast():
    # bfloat16: the variance matmul and its two gradients in bf16, the noise stored in bf16, within bf16 of fp32;
    # float16: everything stays fp32 (sigma^2 h^2 would flush, see heads.py)
    z, h, rho, y = bayes_inputs()
    ref = bayes_loss(z, h, rho, y, torch.autocast("cpu", enabled=False), False)
    matmuls = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
    for dtype in (torch.bfloat16, torch.float16):
        with ops_seen() as ops:  # under a dispatch mode dynamo steps aside: this run is eager, to see the matmuls
            bayes_loss(z, h, rho, y, torch.autocast("cpu", dtype=dtype), True)
        want = torch.float32 if dtype == torch.float16 else dtype
        assert [d for f, d in ops.seen if f in matmuls] == [(want, want)] * 3
        got = bayes_loss(z, h, rho, y, torch.autocast("cpu", dtype=dtype), True)  # and this one compiled
        for a, b in zip(got, ref):
            if dtype == torch.float16:
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
            else:
                assert not torch.equal(a, b)  # rounded, and only that much:
                assert torch.allclose(a, b, rtol=3e-2, atol=3e-2 * b.abs().max().item())


@pytest.mark.parametrize("head", ["softmax", "bayes"])
def test_a_padded_model_trains_the_same_on_the_fused_path(head, monkeypatch):
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=V, vocab_multiple=64, n_layer=1, n_head=2, n_embd=16, head=head))
    x, y = torch.randint(V, (3, 16)), torch.randint(V, (3, 16))
    y[0, :4] = -1
    runs = []
    for on in (("cpu",), ()):
        monkeypatch.setattr(heads, "FUSED", on)
        m.zero_grad()
        torch.manual_seed(5)
        loss = m(x, y)[1]
        loss.backward()
        runs.append([loss.detach()] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*runs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert m.lm_head.weight.grad[V:].abs().max() == 0


def saved_fp32_logits(m, x, y):
    """How many (N, V)-sized fp32 tensors one training step keeps for backward."""
    big = []

    def pack(t):
        if t.dtype == torch.float32 and t.numel() >= x.numel() * m.config.vocab_size:
            big.append(t.shape)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x, y)[1].backward()
    return len(big)


@pytest.mark.parametrize("head", ["softmax", "bayes"])
def test_the_fused_loss_keeps_no_fp32_logits_for_backward(head, monkeypatch):
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=V, vocab_multiple=64, n_layer=1, n_head=2, n_embd=16, head=head))
    x, y = torch.randint(V, (3, 16)), torch.randint(V, (3, 16))
    monkeypatch.setattr(heads, "FUSED", ())
    assert saved_fp32_logits(m, x, y) >= 1  # torch's cross-entropy keeps its fp32 log-softmax: the test can fail
    monkeypatch.setattr(heads, "FUSED", ("cpu",))
    assert saved_fp32_logits(m, x, y) == 0  # bf16 logits, and for bayes bf16 variances and noise


def test_where_compiling_fails_the_fused_loss_runs_eagerly(monkeypatch):
    def broken(fn, **kw):
        def f(*args):
            raise RuntimeError("no compiler here")
        return f
    monkeypatch.setattr(heads, "_fused", {})
    monkeypatch.setattr(torch, "compile", broken)
    z, y = logits_and_targets(torch.float32)
    with pytest.warns(UserWarning, match="running it eagerly") as caught:
        loss = heads.FusedCE.apply(z, y.clamp_min(0), V).sum()
        loss.backward()
    assert len(caught) == 2  # once for each of the two functions
    ref = F.cross_entropy(z.detach()[:, :V], y.clamp_min(0), reduction="sum")
    assert torch.allclose(loss, ref, rtol=1e-6)
    assert heads._fused == {heads.ce_forward: heads.ce_forward, heads.ce_backward: heads.ce_backward}


def test_a_head_that_changes_its_logits_is_not_handed_the_uncut_ones(monkeypatch):
    # GPT.outputs gives the uncut logits only where the head's logits are just their cut: the fused loss would
    # otherwise train on z while the head predicts with its own function of z (docs/heads.md's tempered head)
    monkeypatch.setattr(heads, "FUSED", ("cpu",))
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=V, vocab_multiple=64, n_layer=1, n_head=2, n_embd=16))
    x, y = torch.randint(V, (3, 16)), torch.randint(V, (3, 16))
    h = m.hidden(x)
    assert m.outputs(h)[1].shape == (3, 16, VPAD)
    m.head.logits = lambda model, z: 2 * z  # this model only: a softmax head at temperature 1/2
    assert m.outputs(h)[1] is None
    ref = F.cross_entropy(2 * m.lm_head(h)[..., :V].flatten(0, 1), y.flatten())
    assert torch.allclose(m(x, y)[1], ref, rtol=1e-6)


def test_a_compiled_bayes_model_takes_the_fused_loss_at_its_graph_break(monkeypatch):
    # a compiled model traces softmax's plain formula (Inductor fuses it); bayes leaves the graph and runs the
    # fused loss as an eager run does, the same draws from the same generator
    monkeypatch.setattr(heads, "FUSED", ("cpu",))
    calls = []
    real = heads.fused_sampled_ce
    monkeypatch.setattr(heads, "fused_sampled_ce", torch.compiler.disable(lambda *a: calls.append(1) or real(*a)))
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=V, vocab_multiple=64, n_layer=1, n_head=2, n_embd=32, head="bayes"))
    x, y = torch.randint(V, (4, 16)), torch.randint(V, (4, 16))
    runs = []
    for f in (m, torch.compile(m)):
        m.zero_grad()
        torch.manual_seed(1)
        loss = f(x, y)[1]
        loss.backward()
        runs.append([loss.detach()] + [p.grad.clone() for p in m.parameters()])
    assert len(calls) == 2
    for a, b in zip(*runs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_padded_bayes_model_compiles_again_after_a_reset():
    # GPT.outputs hands a compiled model no uncut logits: with both the logits and their base crossing bayes's
    # graph break, the second compile (from torch's caches) rebuilt the view from freed memory and crashed. In a
    # subprocess, so that a crash fails this test instead of ending the suite.
    code = """if 1:
        import math, torch
        from model import GPT, GPTConfig
        torch.manual_seed(0)
        m = GPT(GPTConfig(block_size=16, vocab_size=61, vocab_multiple=64, n_layer=1, n_head=2, n_embd=24,
                          head="bayes"))
        x, y = torch.randint(61, (4, 16)), torch.randint(61, (4, 16))
        for _ in range(2):
            torch._dynamo.reset()
            loss = torch.compile(m)(x, y)[1]
            loss.backward()
            assert math.isfinite(loss.item())
        print("ok")
    """
    r = run_script("-c", code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
