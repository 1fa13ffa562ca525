"""evaluate.py: its metrics on hand-checked and synthetic cases, and end to end on a trained model."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import train
from generate import generate
from conftest import TINY, run_script
from model import GPT, GPTConfig


def test_ece_hand_checked():
    conf = np.array([0.9, 0.9, 0.2, 0.6])
    correct = np.array([1.0, 0.0, 0.0, 1.0])
    # bins: [0.8667, 0.9333) holds the two 0.9s (accuracy 0.5): 2/4 * 0.4; the 0.2: 1/4 * 0.2; the 0.6: 1/4 * 0.4
    err, bins = evaluate.ece(conf, correct)
    assert err == pytest.approx(0.2 + 0.05 + 0.1)
    assert sorted(b["count"] for b in bins) == [1, 1, 2]


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_an_overconfident_one_is_not():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=200_000)
    calibrated = (rng.uniform(size=conf.size) < conf).astype(float)
    assert evaluate.ece(conf, calibrated)[0] < 0.01
    assert evaluate.ece(conf, calibrated, equal_mass=True)[0] < 0.01
    overconfident = (rng.uniform(size=conf.size) < conf ** 2).astype(float)  # right with probability c^2
    assert evaluate.ece(conf, overconfident)[0] == pytest.approx(1 / 2 - 1 / 3, abs=0.01)  # E[c - c^2]


def test_brier_and_nll_against_their_formulas():
    torch.manual_seed(0)
    logp = torch.randn(50, 7).log_softmax(-1)
    y = torch.randint(7, (50,))
    s = evaluate.scores(logp, y)
    onehot = F.one_hot(y, 7).float()
    assert torch.allclose(s["brier"], ((logp.exp() - onehot) ** 2).sum(-1), atol=1e-6)
    assert torch.allclose(s["nll"], F.nll_loss(logp, y, reduction="none"))
    assert torch.equal(s["correct"], (logp.argmax(-1) == y).float())


def test_temperature_fit_recovers_the_temperature_the_data_was_sampled_at():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=2, n_embd=8)).eval()
    with torch.no_grad():
        m.transformer.wte.weight.mul_(40)  # peaked predictions, so the temperature is well identified
        seq = generate(m, torch.randint(11, (600, 1)), 16, temperature=2.0)  # the data: sampled at T = 2
    cfg = evaluate.EvalConfig(batch_size=64)
    result = evaluate.evaluate(m, seq[:, :-1], seq[:, 1:], cfg, torch.no_grad(), "cpu")
    assert result["temperature_scaled"]["T"] == pytest.approx([2.0, 2.0], rel=0.15)
    assert result["temperature_scaled"]["nll"] < result["nll"] - 0.1


@pytest.mark.parametrize("head", ["softmax", "bayes"])
def test_evaluate_end_to_end(head, data_dir, tmp_path):
    out = str(tmp_path / head)
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", f"--head={head}", "--max_iters=60",
                "--lr_decay_iters=60", "--eval_interval=30"])
    r = evaluate.run(evaluate.EvalConfig(out_dir=out, max_tokens=4096, device="cpu"))
    assert r["tokens"] == 4096 and json.load(open(os.path.join(out, "eval_val.json")))["nll"] == r["nll"]
    assert os.path.getsize(os.path.join(out, "reliability_val.png")) > 1000
    # the NLL, recomputed here from the model's logits over the same windows
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    m = GPT(GPTConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])
    m.eval()
    val = np.fromfile(os.path.join(data_dir, "shakespeare_char", "val.bin"), dtype=np.uint16).astype(np.int64)
    x = torch.from_numpy(val[:4096]).view(-1, 32)
    y = torch.from_numpy(val[1:4097]).view(-1, 32)
    with torch.no_grad():
        if head == "softmax":
            ref = F.cross_entropy(m(x)[0].flatten(0, 1), y.flatten()).item()
            assert r["nll"] == pytest.approx(ref, abs=1e-5)
        else:  # bayes: the draws are random, so compare with a fresh 10-draw estimate loosely
            ref = F.nll_loss(m.log_probs(x).flatten(0, 1), y.flatten()).item()
            assert r["nll"] == pytest.approx(ref, abs=0.01)
            assert r["entropy"] == pytest.approx(r["expected_entropy"] + r["mi"], abs=1e-4)
            assert set(r["nll_by_samples"]) == {"1", "10", "32"}


def test_compare_table_and_errors(data_dir, tmp_path):
    dirs = []
    for seed in (1, 2):
        out = str(tmp_path / f"run{seed}")
        train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=20", f"--seed={seed}",
                    "--lr_decay_iters=20", "--eval_interval=10", "--log_interval=5"])
        evaluate.run(evaluate.EvalConfig(out_dir=out, max_tokens=2048, device="cpu"))
        dirs.append(out)
    r = run_script("evaluate.py", "--compare", *dirs, f"--out={tmp_path / 'cmp'}")
    assert r.returncode == 0, r.stderr
    assert "| softmax | 2 |" in r.stdout and "±" in r.stdout
    assert os.path.exists(tmp_path / "cmp_val_loss.png") and os.path.exists(tmp_path / "cmp_reliability.png")
    r = run_script("evaluate.py", f"--out_dir={tmp_path / 'nothing'}")
    assert r.returncode != 0 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_the_ensemble_and_compare_arguments_take_both_forms():
    keys = {"out", "max_tokens", "shift"}
    assert evaluate.split_args(["a", "--out", "x", "b", "--max_tokens", "64", "--shift", "c"], keys, {"shift"}) == \
        (["a", "b", "c"], ["--out", "x", "--max_tokens", "64", "--shift"])
    assert evaluate.split_args(["--shift", "False", "a", "--out=x", "b"], keys, {"shift"}) == \
        (["a", "b"], ["--shift", "False", "--out=x"])
    assert evaluate.take(["--max_tokens", "64", "--out", "x"], "out", "d") == ("x", ["--max_tokens", "64"])
    assert evaluate.take(["--out=x", "--out_dir=y"], "out", "d") == ("x", ["--out_dir=y"])
    assert evaluate.take(["--out_dir=y"], "out", "d") == ("d", ["--out_dir=y"])
    r = run_script("evaluate.py", "--compare", "a", "--bogus", "1")
    assert r.returncode == 2 and "usage" in r.stderr and "Traceback" not in r.stderr
