"""Set-valued targets for the sigmoid head (train.py sigmoid_targets='ngram') and evaluate.py's set metrics,
against plain-Python references."""
import json
import os

import numpy as np
import pytest
import torch

import checkpoint
import data as batches  # `data` is a common local name here
import evaluate
import train
from conftest import TINY, metrics, run_script, uninterrupted_and_resumed
from configurator import UserError


def reference_sets(train_data, data, pos, k):
    """For each position p of `data`: every token that followed data[p-k:p] in train_data, and data[p]."""
    follow = {}
    for q in range(k, len(train_data)):
        follow.setdefault(tuple(train_data[q - k:q]), set()).add(int(train_data[q]))
    return [(follow.get(tuple(data[p - k:p]), set()) if p >= k else set()) | {int(data[p])} for p in pos]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_target_sets_equal_a_plain_python_reference(k):
    rng = np.random.default_rng(k)
    V = 6
    train_data = rng.integers(0, V, 400).astype(np.uint16)
    val = rng.integers(0, V, 200).astype(np.uint16)
    val[50:60] = 5  # a context the train split may never have had
    table = batches.ngram_table(train_data, k, V)
    for data in (train_data, val):
        pos = rng.integers(0, len(data), (3, 7))
        pos[0, :3] = [0, 1, 2]  # positions without k tokens before them
        rows, cols = batches.target_sets(table, data, pos, k, V)
        got = [set(cols[rows == i].tolist()) for i in range(pos.size)]
        assert got == reference_sets(train_data, data, pos.reshape(-1), k)
        assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)  # no pair twice
    assert any(len(s) > 1 for s in got) and any(len(s) == 1 for s in got)


def test_ngram_refusals(data_dir, tmp_path):
    with pytest.raises(UserError, match="too long"):
        batches.ngram_table(np.zeros(10, np.uint16), 5, 50257)  # 50257^5 does not fit in 64 bits
    for bad in (["--head=softmax"], ["--head=sigmoid", "--batching=lines"], ["--head=sigmoid", "--objective=mlm"],
                ["--head=sigmoid", "--ngram_k=0"]):
        r = run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}/x",
                       "--sigmoid_targets=ngram", *bad)
        assert r.returncode == 2 and "sigmoid_targets='ngram' needs" in r.stderr and "Traceback" not in r.stderr
    r = run_script("train.py", *TINY, f"--data_dir={data_dir}", "--sigmoid_targets=sets")
    assert r.returncode == 2 and "choose next or ngram" in r.stderr
    assert not os.path.exists(tmp_path / "x")


def test_ngram_resume_is_exact(data_dir, tmp_path):
    common = [*TINY, f"--data_dir={data_dir}", "--head=sigmoid", "--sigmoid_targets=ngram", "--ngram_k=3",
              "--eval_interval=10", "--log_interval=5", "--lr_decay_iters=20"]
    ra, rb = uninterrupted_and_resumed(common, tmp_path, 20, 10)
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]
    for x, y in zip(ra, rb):  # (times differ; the numbers must not)
        for key in ("iter", "loss", "train_loss", "val_loss"):
            assert x.get(key) == y.get(key), (x, y)


def test_sigmoid_learns_the_sets_and_evaluate_scores_them(data_dir, tmp_path):
    """Trained on sets, the sigmoid head names several right next characters (recall far above the head
    trained on the next character alone, which names at most the likeliest); evaluate.py's set numbers equal
    a recomputation from the reference sets and the model's own sigmoids."""
    k, runs = 2, {}
    for targets in ("next", "ngram"):
        out = str(tmp_path / targets)
        train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--head=sigmoid", "--max_iters=200",
                    f"--sigmoid_targets={targets}", f"--ngram_k={k}", "--lr_decay_iters=200",
                    "--eval_interval=100", "--log_interval=50"])
        runs[targets] = evaluate.run(evaluate.EvalConfig(out_dir=out, max_tokens=2048, device="cpu", set_k=k))
    nxt, ngram = runs["next"], runs["ngram"]
    assert ngram["set_recall"] > nxt["set_recall"] + 0.2, (nxt, ngram)
    assert ngram["set_size"] > 2 * nxt["set_size"]
    assert ngram["targets"] == "ngram" and nxt["targets"] == "next"
    assert metrics(str(tmp_path / "ngram"))[1]["loss"] > metrics(str(tmp_path / "next"))[1]["loss"]  # ~10 answers

    # recompute the ngram run's set metrics from scratch
    folder = os.path.join(data_dir, "shakespeare_char")
    meta = json.load(open(os.path.join(folder, "meta.json")))
    train_data = np.fromfile(os.path.join(folder, "train.bin"), dtype=meta["dtype"])
    val = np.fromfile(os.path.join(folder, "val.bin"), dtype=meta["dtype"])
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ngram" / "ckpt.pt"))
    model = checkpoint.build_model(ckpt, str(tmp_path / "ngram")).eval()
    T = model.config.block_size
    n = 2048 // T
    x = torch.from_numpy(val[:n * T].astype(np.int64)).view(n, T)
    with torch.no_grad():
        pred = torch.sigmoid(model(x)[0]).flatten(0, 1) > 0.5
    right = reference_sets(train_data, val, range(1, n * T + 1), k)
    hits = sum(pred[i, sorted(s)].sum().item() for i, s in enumerate(right))
    assert ngram["set_precision"] == pytest.approx(hits / pred.sum().item())
    assert ngram["set_recall"] == pytest.approx(hits / sum(map(len, right)))
    assert ngram["right_set_size"] == pytest.approx(sum(map(len, right)) / (n * T))

    r = run_script("evaluate.py", "--compare", str(tmp_path / "next"), str(tmp_path / "ngram"),
                   f"--out={tmp_path / 'cmp'}")
    assert r.returncode == 0, r.stderr
    assert "| sigmoid | 1 |" in r.stdout and "| sigmoid (ngram targets) | 1 |" in r.stdout
