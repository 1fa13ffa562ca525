"""The architecture switches in GPTConfig (norm, mlp, pos), each against a reference written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, RMSNorm, SwiGLU


def tiny(block_size=16, vocab_size=50, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).eval()


def gpt2_keys(n_layer, bias=True):
    """GPT-2's parameter names, written out: what the defaults must keep producing."""
    per_layer = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        for p in per_layer:
            names += [f"transformer.h.{i}.{p}.weight"] + ([f"transformer.h.{i}.{p}.bias"] if bias else [])
    names += ["transformer.ln_f.weight"] + (["transformer.ln_f.bias"] if bias else [])
    return names + ["lm_head.weight"]


@pytest.mark.parametrize("bias", [True, False])
def test_defaults_keep_gpt2_parameter_names_and_shapes(bias):
    m = tiny(bias=bias)
    sd = m.state_dict()
    assert list(sd) == gpt2_keys(2, bias)
    C = 32
    assert sd["transformer.wpe.weight"].shape == (16, C)
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (3 * C, C)
    assert sd["transformer.h.0.mlp.c_fc.weight"].shape == (4 * C, C)
    assert sd["transformer.h.0.mlp.c_proj.weight"].shape == (C, 4 * C)
    assert isinstance(m.transformer.ln_f, torch.nn.LayerNorm)


@pytest.mark.parametrize("bias", [True, False])
def test_rmsnorm_equals_its_formula(bias):
    torch.manual_seed(0)
    n = RMSNorm(24, bias)
    with torch.no_grad():
        n.weight.normal_()
        if bias:
            n.bias.normal_()
    x = torch.randn(3, 5, 24) * 7 + 2  # a mean far from 0: LayerNorm would differ
    ref = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + RMSNorm.eps) * n.weight
    if bias:
        ref = ref + n.bias
    assert torch.allclose(n(x), ref, atol=1e-5)
    assert not torch.allclose(n(x), torch.nn.functional.layer_norm(x, (24,), n.weight, n.bias), atol=1e-2)
    assert [k for k, _ in n.named_parameters()] == (["weight", "bias"] if bias else ["weight"])


def test_rmsnorm_keeps_the_input_dtype():
    torch.manual_seed(0)
    n = RMSNorm(16, False).to(torch.bfloat16)
    x = torch.randn(4, 16) * 100
    y = n(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), x / x.pow(2).mean(-1, keepdim=True).sqrt(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("C,multiple,bias", [(32, 64, True), (128, 64, False), (128, 256, True), (768, 64, False),
                                             (100, 1, True), (96, 32, False)])
def test_swiglu_parameter_count_is_the_formula(C, multiple, bias):
    hidden = math.ceil(2 / 3 * 4 * C / multiple) * multiple
    assert hidden % multiple == 0 and 8 * C / 3 <= hidden < 8 * C / 3 + multiple
    mlp = SwiGLU(GPTConfig(n_embd=C, n_head=4, mlp="swiglu", mlp_multiple=multiple, bias=bias))
    n = sum(p.numel() for p in mlp.parameters())
    assert n == 3 * C * hidden + ((2 * hidden + C) if bias else 0)
    assert mlp.c_proj.weight.shape == (C, hidden)


def test_swiglu_equals_its_formula():
    torch.manual_seed(0)
    mlp = SwiGLU(GPTConfig(n_embd=32, n_head=2, mlp="swiglu", mlp_multiple=8))
    H = mlp.c_proj.in_features
    w_gate, w_up = mlp.c_fc.weight[:H], mlp.c_fc.weight[H:]  # the documented layout: [gate | up]
    b_gate, b_up = mlp.c_fc.bias[:H], mlp.c_fc.bias[H:]
    x = torch.randn(2, 5, 32)
    a = x @ w_gate.T + b_gate
    ref = (a * torch.sigmoid(a) * (x @ w_up.T + b_up)) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    assert torch.allclose(mlp(x), ref, atol=1e-6)


def test_swiglu_projection_gets_gpt2s_depth_scaled_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=64, block_size=8, mlp="swiglu"))
    std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * 8)) < 5e-4
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 5e-4


@pytest.mark.parametrize("kw,bad", [(dict(norm="batchnorm"), "layernorm or rmsnorm"),
                                    (dict(mlp="relu"), "gelu or swiglu"), (dict(mlp_multiple=0), "mlp_multiple")])
def test_unknown_switch_values_are_refused_with_the_choices(kw, bad):
    with pytest.raises(ValueError, match=bad):
        GPTConfig(**kw)


SWITCHES = [dict(norm="rmsnorm"), dict(norm="rmsnorm", bias=False), dict(mlp="swiglu"), dict(mlp="swiglu", bias=False)]


@pytest.mark.parametrize("kw", SWITCHES)
def test_each_switch_trains(kw):
    m = tiny(**kw).train()
    idx, targets = torch.randint(50, (2, 16)), torch.randint(50, (2, 16))
    _, loss = m(idx, targets)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
