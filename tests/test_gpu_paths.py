# What a GPU run takes that a CPU run does not, checked on the CPU: the dtype choice, half-precision autocast,
# torch.compile (inductor runs on CPUs too), a resume that changes dtype or device. The same paths on a real
# GPU: tests/test_cuda.py.
import math
import os

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
import heads
import model as model_py
import train
from conftest import TINY, metrics, ops_seen, run_script
from model import GPT, GPTConfig


def test_auto_dtype_is_bfloat16_only_where_the_hardware_has_it(monkeypatch):
    for capability, want in (((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"), ((9, 0), "bfloat16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts here
        assert model_py.pick_dtype("auto", "cuda") == want
    assert model_py.pick_dtype("auto", "cpu") == "float32"


def test_a_bfloat16_run_resumes_in_float16_with_a_fresh_loss_scale(data_dir, tmp_path):
    out = str(tmp_path / "run")
    base = [*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--eval_interval=4"]
    train.main([*base, "--dtype=bfloat16", "--max_iters=4"])
    train.main([*base, "--dtype=float16", "--max_iters=8", "--init_from=resume"])  # was a traceback
    assert metrics(out)[-1]["iter"] == 8 and math.isfinite(metrics(out)[-1]["val_loss"])
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # the float16 run's own GradScaler state is saved


def test_a_resumed_optimizer_keeps_this_runs_fused_setting():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8))
    x = torch.randint(11, (2, 8))
    unfused = torch.optim.AdamW(m.parameters(), lr=1e-2, fused=False)  # as a CPU-started run would have it
    m(x, x)[1].backward()
    unfused.step()
    saved = unfused.state_dict()
    fused = torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True)  # this run's: fused, as on a GPU
    checkpoint.load_optimizer([fused], saved)
    assert fused.param_groups[0]["fused"] is True and len(fused.state) == len(unfused.state)
    unfused.load_state_dict(saved)
    before = [p.detach().clone() for p in m.parameters()]
    fused.step()  # the same gradients, the fused kernel: the same update
    after_fused = [p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p, b in zip(m.parameters(), before):
            p.copy_(b)
    unfused.step()
    for p, f in zip(m.parameters(), after_fused):
        assert torch.allclose(p, f, atol=1e-6)


# --- half precision -------------------------------------------------------------------------------------------

def bayes_head_inputs(sigma=1e-4):
    torch.manual_seed(0)
    N, C, V = 24, 16, 40
    z = torch.randn(N, V, requires_grad=True)
    h = torch.randn(N, C, requires_grad=True)
    rho = torch.full((V, C), math.log(math.expm1(sigma)), requires_grad=True)
    return z, h, rho, torch.randint(V, (N,))


def test_the_bayes_variances_are_computed_in_fp32_under_float16_autocast():
    z, h, rho, y = bayes_head_inputs()
    # what the head would get from a float16 matmul: sum_c h^2 sigma^2 ~ 16 * 1e-8, below float16's range
    naive = torch.mm(h.detach().square().half(), torch.full((16, 40), 1e-8).half())
    assert (naive.float() < 0.5 * 16e-8).float().mean() > 0.9  # flushed or rounded far down: the test can fail
    results = []
    for ctx in (torch.autocast("cpu", enabled=False), torch.autocast("cpu", dtype=torch.float16)):
        for t in (z, h, rho):
            t.grad = None
        torch.manual_seed(1)
        with ctx:
            loss = heads.SampledCE.apply(z, h.float().square(), rho, y).sum()
            std = heads.logit_std(h, rho)
            kl = heads.GaussianKL.apply(z.t().contiguous(), rho, 1.0)
        (loss + kl).backward()
        results.append((loss.detach(), std.detach(), kl.detach(), z.grad.clone(), h.grad.clone(), rho.grad.clone()))
    for a, b in zip(*results):
        assert a.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    assert results[0][1].min() > 1e-4  # the std itself: sqrt(16 * 1e-8 * h^2), not clamped to 1e-10


def test_the_bayes_variance_matmuls_take_bf16_under_bfloat16_autocast_only():
    # bfloat16 has float32's exponent range, so sigma^2 h^2 does not flush there as in float16 (the test above)
    z, h, rho, y = bayes_head_inputs(sigma=0.05)
    results, seen = [], []
    for dtype in (None, torch.bfloat16, torch.float16):
        for t in (z, h, rho):
            t.grad = None
        torch.manual_seed(1)
        with ops_seen() as ops:
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = heads.SampledCE.apply(z, h.float().square(), rho, y)
            loss.sum().backward()
        matmuls = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)
        seen.append([dtypes for f, dtypes in ops.seen if f in matmuls])
        results.append((loss.detach(), z.grad.clone(), h.grad.clone(), rho.grad.clone()))
    # the variances in forward, then the gradients for h^2 and for rho in backward
    assert seen == [[(torch.float32,) * 2] * 3, [(torch.bfloat16,) * 2] * 3, [(torch.float32,) * 2] * 3]
    for fp32, bf16, fp16 in zip(*results):
        assert torch.equal(fp32, fp16)
        assert bf16.dtype == torch.float32 and not torch.equal(fp32, bf16)  # rounded, and only that much:
        assert torch.allclose(fp32, bf16, rtol=2e-2, atol=2e-2 * fp32.abs().max().item())


# --- torch.compile -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["softmax", "sigmoid", "bayes"])
def test_compile_matches_eager_for_every_head(head):
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=1, n_head=2, n_embd=32, head=head))
    compiled = torch.compile(m)
    x, y = torch.randint(65, (4, 16)), torch.randint(65, (4, 16))
    for ctx, tol in ((torch.autocast("cpu", enabled=False), 1e-5), (torch.autocast("cpu", dtype=torch.bfloat16), 2e-2)):
        runs = []
        for f in (m, compiled):
            m.zero_grad()
            torch.manual_seed(1)  # bayes: the same noise in both (inductor's random numbers differ)
            with ctx:
                _, loss = f(x, y)
            loss.backward()
            runs.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
        (eager, g0), (comp, g1) = runs
        assert torch.allclose(eager, comp, rtol=tol), (head, eager, comp)
        for n in g0:
            scale = g0[n].abs().max().clamp_min(1e-6)
            assert (g0[n] - g1[n]).abs().max() / scale < tol * 10, (head, n)
            assert g1[n].dtype == torch.float32  # no gradient left in half precision


PEAK = """
import sys, torch
from model import GPT, GPTConfig
B, T, V = 8, 128, 8192
torch.manual_seed(0)
m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=T, vocab_size=V, head="bayes")).train()
for p in m.parameters():
    p.grad = torch.zeros_like(p)
x = torch.randint(V, (B, T))
f = torch.compile(m)
def vm(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024
f(x, x.roll(-1, 1))[1].backward()  # compiles
base = vm("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) from here on
f(x, x.roll(-1, 1))[1].backward()
print((vm("VmHWM") - base) / (B * T * V * 4 / 2 ** 20))  # in fp32 logits tensors
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads the peak memory from Linux's /proc")
def test_a_compiled_bayes_model_keeps_the_heads_memory_plan():
    # traced into the graph, SampledCE's block loop made copies of whole (N, V) tensors: 12 logits tensors here
    # (and 3.2x softmax's peak on a GPU), against ~3 when it runs as written (heads.SampledCE.run)
    r = run_script("-c", PEAK)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[-1]) < 6


def test_training_with_compile_evaluates_the_compiled_model(data_dir, tmp_path):
    base = [*TINY, f"--data_dir={data_dir}", "--max_iters=6", "--eval_interval=3", "--log_interval=1"]
    train.main([*base, f"--out_dir={tmp_path / 'eager'}"])
    train.main([*base, f"--out_dir={tmp_path / 'compiled'}", "--compile=True"])
    a, b = metrics(str(tmp_path / "eager")), metrics(str(tmp_path / "compiled"))
    assert [r["iter"] for r in a] == [r["iter"] for r in b]
    for ra, rb in zip(a, b):
        for k in ("loss", "train_loss", "val_loss"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-4), (ra["iter"], k)


# --- evaluation at GPT-2's vocabulary ------------------------------------------------------------------------

def test_the_temperature_grid_is_computed_in_chunks_alike():
    torch.manual_seed(0)
    logp = torch.randn(300, 50).log_softmax(-1)
    y = torch.randint(50, (300,))
    inv_t = torch.tensor(1 / evaluate.TEMPERATURES, dtype=torch.float32)
    whole = evaluate.nll_at_temperatures(logp, y, inv_t, size=10 ** 9)
    small = evaluate.nll_at_temperatures(logp, y, inv_t, size=97 * 50 * 7)  # 7 rows at a time
    by_hand = [-(logp / t).log_softmax(-1).gather(1, y[:, None]).double().sum().item() for t in evaluate.TEMPERATURES]
    assert np.allclose(whole, small, rtol=1e-6) and np.allclose(whole, by_hand, rtol=1e-5)
