"""The architecture switches in GPTConfig (norm, mlp, pos), each against a reference written here."""

import math

import pytest
import torch

import checkpoint
from model import GPT, GPTConfig, RMSNorm, SwiGLU, apply_rope, rope_tables
from test_model import assert_causal, assert_generation_paths_agree, assert_prefill_and_steps_match_full_forward

LLAMA = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)


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


def rotate(x, positions, theta=10000.0):
    """x (..., T, hs) rotated by the model's RoPE at the given positions (T,)."""
    cos, sin = rope_tables(x.size(-1), theta, int(positions.max()) + 1)
    return apply_rope(x, cos[positions], sin[positions])


def test_rope_is_a_rotation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 16)
    y = rotate(x, torch.arange(10) * 37)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # per position, per head
    assert torch.equal(rotate(x, torch.zeros(10, dtype=torch.long)), x)  # position 0: no turn
    assert not torch.allclose(y[..., 1:, :], x[..., 1:, :], atol=1e-2)


def test_rope_equals_complex_multiplication():
    """Pair i = (x_i, x_{i+hs/2}) as the complex number x_i + j x_{i+hs/2}, times e^{j pos theta^(-2i/hs)}."""
    torch.manual_seed(0)
    hs, T = 8, 12
    x = torch.randn(2, T, hs, dtype=torch.float64)
    ref = torch.empty_like(x)
    for t in range(T):
        for i in range(hs // 2):
            z = complex(x[0, t, i], x[0, t, i + hs // 2]) * complex(math.cos(t * 500.0 ** (-2 * i / hs)),
                                                                   math.sin(t * 500.0 ** (-2 * i / hs)))
            ref[0, t, i], ref[0, t, i + hs // 2] = z.real, z.imag
    got = rotate(x.float(), torch.arange(T), theta=500.0)
    assert torch.allclose(got[0].double(), ref[0], atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, 16), torch.randn(2, 3, 10, 16)
    pos = torch.arange(10)
    scores = rotate(q, pos) @ rotate(k, pos).transpose(-1, -2)  # (B, nh, T, T)
    for shift in (1, 7, 1000):
        shifted = rotate(q, pos + shift) @ rotate(k, pos + shift).transpose(-1, -2)
        assert torch.allclose(shifted, scores, atol=1e-3), shift
    # ...and they do depend on it: the plain dot products differ, and so do scores at other offsets
    assert not torch.allclose(q @ k.transpose(-1, -2), scores, atol=1e-2)
    moved = rotate(q, pos + 3) @ rotate(k, pos).transpose(-1, -2)
    assert not torch.allclose(moved, scores, atol=1e-2)


def test_rope_model_has_no_wpe_and_saves_no_tables():
    m = tiny(pos="rope")
    sd = m.state_dict()
    assert list(sd) == [k for k in gpt2_keys(2) if k != "transformer.wpe.weight"]
    assert m.num_params() == m.num_params(non_embedding=False) == sum(p.numel() for p in m.parameters())
    assert "rope_cos" in dict(m.named_buffers()) and not any("rope" in k for k in sd)
    assert m.rope_cos.shape == (16, 8)  # (block_size, hs/2), hs = 32 / 2
    fresh = GPT(m.config)
    fresh.load_state_dict(sd)  # strict: the tables are rebuilt, not loaded
    idx = torch.randint(50, (1, 16))
    assert torch.equal(fresh.eval()(idx)[0], m(idx)[0])
    assert tiny().num_params() == tiny().num_params(non_embedding=False) - 16 * 32  # learned: wpe left out


@pytest.mark.parametrize("kw", [dict(pos="rope"), LLAMA])
def test_rope_is_causal(kw):
    assert_causal(tiny(**kw))


@pytest.mark.parametrize("kw", [dict(pos="rope"), LLAMA])
def test_rope_cache_prefill_and_steps_match_full_forward(kw):
    assert_prefill_and_steps_match_full_forward(tiny(**kw))


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(), dict(temperature=1.3, top_k=20, top_p=0.9)])
@pytest.mark.parametrize("prompt_len", [1, 7, 40])  # 40 > block_size: the prompt itself is cropped
def test_llama_kv_cache_generation_equals_cache_free(kw, prompt_len):
    m = tiny(block_size=16, **LLAMA)
    with torch.no_grad():  # sharper attention than at init (nearly uniform there), so positions matter
        for block in m.transformer.h:
            block.attn.c_attn.weight.mul_(10)
    assert_generation_paths_agree(m, prompt_len, kw)


def test_rope_tables_grow_when_block_size_is_raised():
    m = tiny(pos="rope")
    idx = torch.randint(50, (2, 40))
    short = m(idx[:, :16])[0]
    m.config.block_size = 40  # no learned table caps the length: the rotary tables are extended
    long = m(idx)[0]
    assert m.rope_cos.shape == (40, 8) and "rope_cos" not in m.state_dict()
    cos, sin = rope_tables(16, 10000.0, 40)
    assert torch.equal(m.rope_cos, cos) and torch.equal(m.rope_sin, sin)
    assert torch.allclose(long[:, :16], short, atol=1e-6)


@pytest.mark.parametrize("kw,bad", [(dict(norm="batchnorm"), "layernorm or rmsnorm"),
                                    (dict(mlp="relu"), "gelu or swiglu"), (dict(mlp_multiple=0), "mlp_multiple"),
                                    (dict(pos="alibi"), "learned or rope"), (dict(pos="rope", rope_theta=0.0), "theta"),
                                    (dict(pos="rope", n_embd=30, n_head=2), "head size .* 15 must be even")])
def test_unknown_switch_values_are_refused_with_the_choices(kw, bad):
    with pytest.raises(ValueError, match=bad):
        GPTConfig(**kw)


SWITCHES = [dict(norm="rmsnorm"), dict(norm="rmsnorm", bias=False), dict(mlp="swiglu"), dict(mlp="swiglu", bias=False),
            dict(pos="rope"), dict(pos="rope", bias=False), dict(pos="rope", dropout=0.1), LLAMA]


@pytest.mark.parametrize("kw", SWITCHES)
def test_each_switch_trains(kw):
    m = tiny(**kw).train()
    idx, targets = torch.randint(50, (2, 16)), torch.randint(50, (2, 16))
    _, loss = m(idx, targets)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_train_config_passes_the_switches_and_fine_tuning_checks_them():
    import train
    from configurator import UserError
    cfg = train.TrainConfig(norm="rmsnorm", mlp="swiglu", mlp_multiple=32, pos="rope", rope_theta=500.0, bias=False)
    mc = train.model_config(cfg, 65)
    assert (mc.norm, mc.mlp, mc.mlp_multiple, mc.pos, mc.rope_theta, mc.bias) == ("rmsnorm", "swiglu", 32, "rope",
                                                                                    500.0, False)
    assert train.model_config(train.TrainConfig(), 65) == GPTConfig(vocab_size=65)  # defaults agree
    with pytest.raises(UserError, match="learned or rope"):
        train.model_config(train.TrainConfig(pos="alibi"), 65)
    m = tiny(norm="rmsnorm")
    src = dict(tiny().config.__dict__)
    del src["norm"], src["mlp"], src["pos"]  # a checkpoint from before the switches: GPT-2's parts
    with pytest.raises(UserError, match="norm='layernorm'"):
        checkpoint.fine_tune_from(m, {"model_config": src, "model": {}, "tokenizer": "t"}, "t")
    checkpoint.fine_tune_from(tiny(), {"model_config": src, "model": tiny().state_dict(), "tokenizer": "t"}, "t")


def test_llama_config_is_the_quickstart_with_llama_parts():
    import os
    import train
    from configurator import configure
    from conftest import ROOT
    base, llama = (configure(train.TrainConfig, [os.path.join(ROOT, "config", f)])
                   for f in ("shakespeare_char_adamw.py", "shakespeare_char_llama.py"))
    switched = {"out_dir", "norm", "mlp", "pos", "bias", "mlp_multiple"}
    assert {k for k in base.__dict__ if base.__dict__[k] != llama.__dict__[k]} == switched
    assert (llama.norm, llama.mlp, llama.pos, llama.bias) == ("rmsnorm", "swiglu", "rope", False)
    sizes = [sum(p.numel() for p in GPT(train.model_config(c, 65)).parameters()) for c in (base, llama)]
    assert abs(sizes[1] - sizes[0]) < 0.001 * sizes[0]  # the comparison is at the same size, as its comment says
