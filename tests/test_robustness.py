# The tools of the little-data / noisy-data / unfamiliar-text studies (docs/robustness.md): less or noisier
# training text, the best-val checkpoint, deep ensembles, the shifted texts and the AUROC.
import json
import math
import os
import random
from collections import Counter

import numpy as np
import pytest
import torch

import data
import evaluate
import train
from conftest import TINY, metrics, run_script
from model import GPT, GPTConfig


def test_degrade_takes_the_first_fraction_and_replaces_exactly_the_asked_share():
    split = np.arange(10_000, dtype=np.uint16) % 50  # ids 0..49 of a vocabulary of 65
    assert np.array_equal(data.degrade(split, 0.2, 0.0, 65), split[:2000])
    noisy = data.degrade(split, 0.5, 0.3, 65)
    assert len(noisy) == 5000 and noisy.dtype == split.dtype
    changed = noisy != split[:5000]
    # 1,500 positions redrawn; each keeps its id with chance 1/65; ids 50..64 prove the draw spans the vocabulary
    assert 1500 * (1 - 3 / 65) < changed.sum() <= 1500 and noisy.max() >= 50
    assert np.array_equal(noisy, data.degrade(split, 0.5, 0.3, 65))  # a fixed seed: every run sees the same text
    assert np.array_equal(split[:10], np.arange(10))  # the split itself is untouched


def test_training_on_a_fraction_reads_only_that_fraction_and_keeps_val_whole(data_dir):
    cfg = train.TrainConfig(dataset="shakespeare_char", data_dir=data_dir, block_size=32, train_fraction=0.05,
                            train_noise=0.1)
    full = data.load(train.TrainConfig(dataset="shakespeare_char", data_dir=data_dir, block_size=32))
    d = data.load(cfg)
    n = int(len(full.splits["train"]) * 0.05)
    assert len(d.splits["train"]) == n and data.batch_rows(d, "train") == n - 32
    assert np.array_equal(np.asarray(d.splits["val"]), np.asarray(full.splits["val"]))
    same = np.asarray(d.splits["train"]) == np.asarray(full.splits["train"][:n])
    assert 0.88 < same.mean() < 0.92  # 10% redrawn, a few of them to the id they had


def test_bad_fractions_are_refused_with_a_message(data_dir, tmp_path):
    for arg in ("--train_fraction=0", "--train_fraction=1.5", "--train_noise=-0.1"):
        r = run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", arg)
        assert r.returncode != 0 and "train_fraction must be" in r.stderr and "Traceback" not in r.stderr
    r = run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", "--train_fraction=1e-5")
    assert r.returncode != 0 and "fewer than block_size+1" in r.stderr and "Traceback" not in r.stderr


def test_window_split_deals_every_window_once_and_leaks_val_text_into_train(data_dir):
    base = dict(dataset="shakespeare_char", data_dir=data_dir, block_size=32)
    full = data.load(train.TrainConfig(**base))
    d = data.load(train.TrainConfig(**base, split_by="windows"))
    text = np.concatenate([full.splits["train"], full.splits["val"]])
    assert np.array_equal(d.splits["train"], text) and np.array_equal(d.splits["val"], text)
    tr, va = d.starts["train"], d.starts["val"]
    n = len(text) - 32
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(n))  # every window, in one split only
    assert len(va) == round(n * len(full.splits["val"]) / len(text))
    assert data.batch_rows(d, "train") == len(tr) and data.batch_rows(d, "val") == len(va)
    # a batch's rows are the windows at the split's starts, read by hand
    b = data.get_batch(d, "val", [0, 5, len(va) - 1], "cpu")
    x, y = b.x, b.y
    for r, k in enumerate([0, 5, len(va) - 1]):
        i = va[k]
        assert x[r].tolist() == text[i:i + 32].tolist() and y[r].tolist() == text[i + 1:i + 33].tolist()
    # the leak: nearly every token a val window predicts is also predicted in some train window
    covered = np.zeros(len(text), bool)
    for i in tr:  # plain Python, the slow and obvious way
        covered[i + 1:i + 33] = True
    targets = np.unique((va[:, None] + np.arange(1, 33)).ravel())
    assert covered[targets].mean() > 0.999
    with pytest.raises(data.UserError, match="split_by='windows' needs"):
        data.check(train.TrainConfig(**base, split_by="windows", train_fraction=0.5), False)
    # ngram sets with this split were built from the joined text at the rows' indices, not their positions
    with pytest.raises(data.UserError, match="split_by='windows' needs .*sigmoid_targets='next'"):
        data.check(train.TrainConfig(**base, split_by="windows", sigmoid_targets="ngram"), True)


def test_save_best_keeps_the_checkpoint_of_the_lowest_val_loss(data_dir, tmp_path):
    out = str(tmp_path / "run")
    # 2,000 characters at a high learning rate: val loss falls, then rises as the model learns them by heart
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=200", "--eval_interval=20",
                "--n_layer=4", "--n_head=4", "--n_embd=128", "--lr_decay_iters=200", "--learning_rate=1e-2",
                "--train_fraction=0.002", "--save_best=True"])
    evals = [m for m in metrics(out) if "val_loss" in m]
    best = min(evals, key=lambda m: m["val_loss"])
    saved = torch.load(os.path.join(out, "best", "ckpt.pt"), weights_only=True)
    last = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert saved["iter_num"] == best["iter"] and last["iter_num"] == 200
    assert saved["best_val_loss"] == pytest.approx(best["val_loss"])
    r = evaluate.run(evaluate.EvalConfig(out_dir=os.path.join(out, "best"), max_tokens=2048, device="cpu"))
    assert r["iter"] == best["iter"]  # a best/ folder is evaluated like any run


# --- the ensemble --------------------------------------------------------------------------------------------

def tiny_models(n, head="softmax"):
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        m = GPT(GPTConfig(block_size=16, vocab_size=13, n_layer=1, n_head=2, n_embd=16, head=head)).eval()
        with torch.no_grad():
            m.transformer.wte.weight.mul_(20)  # confident, and different, predictions per seed
        models.append(m)
    return models


def test_ensemble_scores_the_average_of_the_members_probabilities():
    models = tiny_models(3)
    torch.manual_seed(5)
    x, y = torch.randint(13, (40, 16)), torch.randint(13, (40, 16))
    r = evaluate.evaluate(models, x, y, evaluate.EvalConfig(batch_size=8), torch.no_grad(), "cpu")
    with torch.no_grad():  # by hand: the mean probability of the right token, and the entropies
        p = sum(m.log_probs(x).exp() for m in models) / 3  # (N, T, V)
        nll = -p.gather(-1, y[..., None]).log().mean().item()
        entropy = -(p * p.log()).sum(-1).mean().item()
        each = sum(-(m.log_probs(x).exp() * m.log_probs(x)).sum(-1).mean().item() for m in models) / 3
        acc = (p.argmax(-1) == y).float().mean().item()
    assert r["head"] == "ensemble" and r["nll"] == pytest.approx(nll, abs=1e-5)
    assert r["entropy"] == pytest.approx(entropy, abs=1e-4) and r["mi"] == pytest.approx(entropy - each, abs=1e-4)
    assert r["acc"] == pytest.approx(acc) and r["mi"] > 0.05  # the members disagree
    one = evaluate.evaluate(models[:1], x, y, evaluate.EvalConfig(batch_size=8), torch.no_grad(), "cpu")
    assert one["head"] == "softmax" and "mi" not in one


def test_ensemble_from_the_command_line_and_in_compare(data_dir, tmp_path):
    dirs = []
    for seed in (1, 2):
        out = str(tmp_path / f"run{seed}")
        train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=20", f"--seed={seed}",
                    "--lr_decay_iters=20", "--eval_interval=10"])
        evaluate.run(evaluate.EvalConfig(out_dir=out, max_tokens=2048, device="cpu"))
        dirs.append(out)
    ens = str(tmp_path / "ens")
    r = run_script("evaluate.py", "--ensemble", *dirs, f"--out={ens}", "--max_tokens=2048", "--device=cpu")
    assert r.returncode == 0, r.stderr
    result = json.load(open(os.path.join(ens, "eval_val.json")))
    assert [m["out_dir"] for m in result["members"]] == dirs and result["tokens"] == 2048
    assert "auroc_mi" in result["shift"]["words"] and os.path.getsize(os.path.join(ens, "shift_val.png")) > 1000
    r = run_script("evaluate.py", "--compare", *dirs, ens, f"--out={tmp_path / 'cmp'}", "--metrics=nll,mi,auroc_words")
    assert r.returncode == 0, r.stderr
    assert "| ensemble of 2 softmax | 1 |" in r.stdout and "AUROC words, H" in r.stdout
    # `--key value`, as every other command takes it: the same result
    r = run_script("evaluate.py", "--ensemble", dirs[0], "--out", ens + "2", "--max_tokens", "2048", dirs[1],
                   "--device", "cpu", "--shift")
    assert r.returncode == 0, r.stderr
    again = json.load(open(os.path.join(ens + "2", "eval_val.json")))
    assert [m["out_dir"] for m in again["members"]] == dirs and again["nll"] == result["nll"]
    r = run_script("evaluate.py", "--compare", *dirs, "--out", str(tmp_path / "cmp2"), "--metrics", "nll,mi", ens)
    assert r.returncode == 0, r.stderr
    assert "| ensemble of 2 softmax | 1 |" in r.stdout and os.path.isfile(tmp_path / "cmp2_val_loss.png")
    r = run_script("evaluate.py", "--ensemble", dirs[0], f"--out={ens}")
    assert r.returncode != 0 and "at least 2" in r.stderr and "Traceback" not in r.stderr
    r = run_script("evaluate.py", "--compare", *dirs, "--metrics=nll,bogus")
    assert r.returncode != 0 and "unknown metric bogus" in r.stderr and "Traceback" not in r.stderr


# --- unfamiliar text -----------------------------------------------------------------------------------------

def test_auroc_against_the_pairwise_count():
    rng = np.random.default_rng(0)
    for _ in range(20):
        clean = rng.integers(0, 6, rng.integers(1, 30)).astype(float)  # small integers: many ties
        shifted = rng.integers(0, 8, rng.integers(1, 30)).astype(float)
        pairs = sum((s > c) + 0.5 * (s == c) for s in shifted for c in clean)
        assert evaluate.auroc(clean, shifted) == pytest.approx(pairs / (len(clean) * len(shifted)))
    assert evaluate.auroc([0, 1], [2, 3]) == 1.0 and evaluate.auroc([2, 3], [0, 1]) == 0.0


def test_shuffled_words_keep_each_lines_words(shakespeare_text):
    text = shakespeare_text[:20_000]
    out = evaluate.shuffle_words(text, random.Random(1))
    assert out == evaluate.shuffle_words(text, random.Random(1)) and out != text
    lines, shuffled = text.split("\n"), out.split("\n")
    assert len(lines) == len(shuffled) and len(out) == len(text)
    for a, b in zip(lines, shuffled):
        assert sorted(a.split(" ")) == sorted(b.split(" "))
    moved = sum(a != b for a, b in zip(lines, shuffled) if len(set(a.split(" "))) > 1)
    assert moved > 0.8 * sum(len(set(a.split(" "))) > 1 for a in lines)


def test_unigram_characters_follow_the_texts_frequencies(shakespeare_text):
    text = shakespeare_text[:50_000]
    out = evaluate.unigram_chars(text, random.Random(1))
    assert len(out) == len(text) and set(out) <= set(text)
    want, got = Counter(text), Counter(out)
    for c, n in want.items():  # each count within 5 standard deviations of its binomial expectation
        p = n / len(text)
        assert abs(got[c] - n) <= 5 * math.sqrt(len(text) * p * (1 - p)) + 1, c
    assert out[:1000].count(" the ") < text[:1000].count(" the ")  # the words are gone


def test_shift_scores_on_a_trained_run_by_hand(data_dir, tmp_path):
    out = str(tmp_path / "bayes")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=30", "--head=bayes",
                "--lr_decay_iters=30", "--eval_interval=30"])
    r = evaluate.run(evaluate.EvalConfig(out_dir=out, max_tokens=4096, device="cpu"))
    s = r["shift"]
    assert s["clean"]["windows"] == 128 and s["clean"]["entropy"] == pytest.approx(r["entropy"], rel=1e-3)
    # the unigram shift, redone here: decode the 128 windows' text, redraw it, encode, score each window
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    m = GPT(GPTConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])
    m.eval()
    meta = json.load(open(os.path.join(data_dir, "shakespeare_char", "meta.json")))
    chars = meta["tokenizer"]["chars"]
    val = np.fromfile(os.path.join(data_dir, "shakespeare_char", "val.bin"), dtype=np.uint16)
    text = "".join(chars[i] for i in val[:4097])
    drawn = evaluate.unigram_chars(text, random.Random(1337))
    ids = torch.tensor([chars.index(c) for c in drawn[:4096]]).view(128, 32)
    with torch.no_grad():
        def per_window(x):
            torch.manual_seed(1337)  # the bayes draws, as evaluate.py seeds them
            return torch.cat([m.predictive(m.hidden(x[i:i + 16]))[1].mean(-1) for i in range(0, 128, 16)]).numpy()
        clean, shifted = per_window(torch.from_numpy(val[:4096].astype(np.int64)).view(128, 32)), per_window(ids)
    assert s["unigram"]["entropy"] == pytest.approx(shifted.mean(), rel=1e-4)
    assert s["unigram"]["auroc_entropy"] == pytest.approx(evaluate.auroc(clean, shifted), abs=0.01)
    assert 0 <= s["words"]["auroc_mi"] <= 1 and s["words"]["windows"] == 128
    assert os.path.getsize(os.path.join(out, "shift_val.png")) > 1000


def test_apart_is_twice_the_larger_std():
    assert evaluate.apart([1.0, 1.2], [2.0, 2.2])  # std 0.14 each, means 1.0 apart
    assert not evaluate.apart([1.0, 2.0], [2.0, 2.2])  # std 0.71: 1.0 < 1.41
    assert evaluate.apart([1.0], [2.0, 2.2]) and evaluate.apart([1.0], [1.1]) is None
