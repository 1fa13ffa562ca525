"""A checkpoint written before the one-concern split still loads, resumes and samples (fixtures/README.md)."""
import json
import os
import shutil

import pytest
import torch

import checkpoint
import sample
import train
from conftest import metrics
from generate import generate

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# the run that wrote fixtures/ckpt_v1.pt at iteration 15, dropout on
RUN = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
       "--gradient_accumulation_steps=2", "--dataset=shakespeare_char", "--device=cpu", "--dtype=float32", "--eval_iters=3", "--eval_interval=10",
       "--log_interval=1", "--warmup_iters=5", "--learning_rate=3e-3", "--min_lr=3e-4", "--lr_decay_iters=30",
       "--dropout=0.1"]


def test_an_old_checkpoint_resumes_as_the_old_code_went_on(data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(os.path.join(HERE, "ckpt_v1.pt"), out / "ckpt.pt")
    train.main([*RUN, f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume", "--max_iters=30"])
    old = [json.loads(line) for line in open(os.path.join(HERE, "metrics_v1.jsonl"))]
    key = lambda r: (r["iter"], "loss" in r)  # noqa: E731
    want = {key(r): r for r in old if r["iter"] > 15}
    got = {key(r): r for r in metrics(str(out)) if r["iter"] > 15}
    assert set(got) == set(want) and len(want) == 16  # 14 steps (16..29) and 2 evaluations (20, 30)
    for k, r in want.items():
        for name in ("loss", "train_loss", "val_loss"):
            if name in r:  # the old code's numbers, on this code (bit for bit on the machine that wrote them)
                assert got[k][name] == pytest.approx(r[name], rel=1e-5), (k, name)


def test_an_old_checkpoint_samples(tmp_path, capsys):
    ckpt = checkpoint.load_checkpoint(os.path.join(HERE, "ckpt_v1.pt"))
    model = checkpoint.build_model(ckpt, HERE).eval()
    assert set(model.state_dict()) == set(ckpt["model"])  # GPT-2's keys, then and now
    prompt = torch.zeros((1, 1), dtype=torch.long)
    cached, recomputed = (generate(model, prompt, 40, greedy=True, use_cache=c) for c in (True, False))
    assert torch.equal(cached, recomputed)
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(HERE, "ckpt_v1.pt"), out / "ckpt.pt")
    sample.main([f"--out_dir={out}", "--max_new_tokens=30", "--num_samples=1", "--start=ROMEO:", "--device=cpu"])
    assert capsys.readouterr().out.startswith("ROMEO:")
