# The CUDA paths on a real GPU: skipped where there is none (CI on CPU runs none of this). gpu_check.sh runs them
# with the GPU benchmark; what they check on a CPU already is in tests/test_gpu_paths.py and test_padding.py.
# On CUDA, exact resume is not bit-for-bit (SDPA's flash backward and index_add_ use atomics): tolerances.
import math
import os
import sys

import pytest
import torch

import train
from conftest import ROOT, TINY, metrics, run_script
from generate import generate
from model import GPT, GPTConfig, autocast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

GPU = [a for a in TINY if not a.startswith(("--device", "--dtype"))] + ["--device=cuda"]


@pytest.mark.parametrize("head", ["softmax", "sigmoid", "bayes"])
def test_bf16_training_of_every_head(head, data_dir, tmp_path):
    out = str(tmp_path / head)
    train.main([*GPU, f"--data_dir={data_dir}", f"--out_dir={out}", f"--head={head}", "--dtype=bfloat16",
                "--max_iters=60", "--lr_decay_iters=60", "--eval_interval=30", "--log_interval=10"])
    rows = metrics(out)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["model_config"]["vocab_multiple"] == 64 and ckpt["model"]["lm_head.weight"].shape[0] == 128


@pytest.mark.parametrize("head", ["softmax", "sigmoid", "bayes"])
def test_compile_matches_eager_on_the_gpu(head):
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=64, vocab_size=100, vocab_multiple=64, n_layer=2, n_head=2, n_embd=64,
                      head=head)).cuda()
    compiled = torch.compile(m)
    x, y = torch.randint(100, (8, 64), device="cuda"), torch.randint(100, (8, 64), device="cuda")
    runs = []
    for f in (m, compiled):
        m.zero_grad()
        torch.manual_seed(1)
        with autocast("cuda", "bfloat16"):
            _, loss = f(x, y)
        loss.backward()
        runs.append((loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (a, ga), (b, gb) = runs
    assert b == pytest.approx(a, rel=2e-2)  # bf16, and the bayes noise comes from another generator
    for n in ga:
        assert gb[n].dtype == torch.float32
        assert torch.allclose(ga[n], gb[n], rtol=0.1, atol=0.1 * ga[n].abs().max().item() + 1e-6), n


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("head", ["softmax", "bayes"])
def test_the_fused_loss_matches_the_plain_one_on_the_gpu(head, dtype, monkeypatch):
    # heads.FusedCE, what an eager GPU run trains these heads with (on a CPU: tests/test_fused.py), against the
    # path a CPU takes, on a padded vocabulary
    import heads
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # train.main may have switched it on
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=64, vocab_size=100, vocab_multiple=64, n_layer=2, n_head=2, n_embd=64,
                      head=head)).cuda()
    x, y = torch.randint(100, (8, 64), device="cuda"), torch.randint(100, (8, 64), device="cuda")
    y[0, :9] = -1
    runs = []
    for on in (("cuda",), ()):
        monkeypatch.setattr(heads, "FUSED", on)
        m.zero_grad()
        torch.manual_seed(1)
        with autocast("cuda", dtype):
            loss = m(x, y)[1]
        loss.backward()
        runs.append([loss.detach()] + [p.grad.clone() for p in m.parameters()])
    tol = 1e-4 if dtype == "float32" else 5e-2  # bf16: and the bayes noise drawn in bf16 on the fused path
    for a, b in zip(*runs):
        assert torch.allclose(a, b, rtol=tol, atol=tol * b.abs().max().item() + 1e-7)
    assert m.lm_head.weight.grad[100:].abs().max() == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("way", [dict(use_cache=True), dict(compile=True)], ids=["cached", "compiled"])
def test_kv_cache_generation_on_the_gpu(dtype, way):
    # compiled: the static cache and the decode step recorded as a CUDA graph (generate.stream)
    torch.compiler.reset()
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=32, vocab_size=70, vocab_multiple=64, n_layer=2, n_head=4, n_embd=64)).cuda().eval()
    prompt = torch.randint(70, (2, 5), device="cuda")
    with autocast("cuda", dtype):
        for n in (20, 50):  # within the context, and past block_size (the window recomputed at every step)
            torch.manual_seed(3)
            a = generate(m, prompt, n, greedy=True, **way)
            torch.manual_seed(3)
            b = generate(m, prompt, n, greedy=True, use_cache=False)
            assert a.max() < 70  # the padded ids are never chosen
            if dtype == "float32":
                assert torch.equal(a, b), (n, a, b)
            else:
                assert (a == b).float().mean().item() > 0.9, n


def test_padded_ids_are_never_sampled_on_the_gpu():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=70, vocab_multiple=64, n_layer=1, n_head=2, n_embd=32)).cuda().eval()
    with torch.no_grad():
        m.lm_head.weight[70:] = 10.0  # padding rows that would win if they were ever looked at
    out = generate(m, torch.zeros(256, 1, dtype=torch.long, device="cuda"), 15, temperature=2.0)
    assert out.max() < 70


def test_fp16_with_the_grad_scaler(data_dir, tmp_path):
    out = str(tmp_path / "fp16")
    train.main([*GPU, f"--data_dir={data_dir}", f"--out_dir={out}", "--dtype=float16", "--head=bayes",
                "--max_iters=40", "--lr_decay_iters=40", "--eval_interval=20", "--log_interval=10"])
    losses = [r["loss"] for r in metrics(out) if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["scaler"]["scale"] > 1  # the GradScaler ran, and did not skip its way down to nothing


def test_resume_within_tolerance(data_dir, tmp_path):
    from conftest import uninterrupted_and_resumed
    args = [*GPU, f"--data_dir={data_dir}", "--dtype=bfloat16", "--eval_interval=10", "--log_interval=1",
            "--lr_decay_iters=20"]
    a, b = uninterrupted_and_resumed(args, tmp_path, 20, 10)
    assert [r["iter"] for r in a] == [r["iter"] for r in b]
    for x, y in zip(a, b):
        for k in ("loss", "val_loss"):
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=2e-2), (k, x["iter"])


def test_one_process_torchrun_with_nccl(data_dir, tmp_path):
    import subprocess
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py", *GPU,
           f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=10", "--eval_interval=10"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, "ckpt.pt")) and metrics(out)[-1]["iter"] == 10


def test_sample_and_evaluate_a_gpu_checkpoint(data_dir, tmp_path):
    out = str(tmp_path / "run")
    train.main([*GPU, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=20", "--eval_interval=20"])
    r = run_script("sample.py", f"--out_dir={out}", "--device=cuda", "--num_samples=1", "--max_new_tokens=30")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_script("evaluate.py", f"--out_dir={out}", "--device=cuda", "--max_tokens=4096")
    assert r.returncode == 0, r.stderr[-2000:]


def test_hellaswag_scoring_on_the_gpu():
    """The context-cached scoring on CUDA (a padded vocabulary) equals the CPU's in float32, and stays close
    under bf16 autocast."""
    from hellaswag import ending_log_probs, ending_log_probs_plain
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=64, vocab_size=100, vocab_multiple=64, n_layer=2, n_head=2, n_embd=64)).eval()
    ctx, ends = torch.randint(100, (20,)).tolist(), [torch.randint(100, (n,)).tolist() for n in (3, 7, 1, 5)]
    ref = ending_log_probs_plain(m, ctx, ends)
    m.cuda()
    assert torch.allclose(ending_log_probs(m, ctx, ends), ref, atol=1e-3)
    with autocast("cuda", "bfloat16"):
        assert torch.allclose(ending_log_probs(m, ctx, ends), ref, atol=0.05 * len(ends[1]))
