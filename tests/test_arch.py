"""The architecture switches in GPTConfig (norm, mlp, pos), each against a reference written here."""

import pytest
import torch

from model import GPT, GPTConfig, RMSNorm


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


@pytest.mark.parametrize("kw,bad", [(dict(norm="batchnorm"), "layernorm or rmsnorm")])
def test_unknown_switch_values_are_refused_with_the_choices(kw, bad):
    with pytest.raises(ValueError, match=bad):
        GPTConfig(**kw)


SWITCHES = [dict(norm="rmsnorm"), dict(norm="rmsnorm", bias=False)]


@pytest.mark.parametrize("kw", SWITCHES)
def test_each_switch_trains(kw):
    m = tiny(**kw).train()
    idx, targets = torch.randint(50, (2, 16)), torch.randint(50, (2, 16))
    _, loss = m(idx, targets)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
