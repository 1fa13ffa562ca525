"""Masked language modelling and padded batches: the attention mask against a naive reference, bidirectional
attention, BERT's masking proportions, the loss on chosen positions for every head, batching='lines' against a
plain-Python document splitter, fill against a reference loop, and the scripts end to end."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data as batches  # `data` is a common local name here
import evaluate
import train
from conftest import ROOT, TINY, metrics as read_metrics, run_script, uninterrupted_and_resumed
from configurator import UserError, configure
from checkpoint import export_hf
from generate import KVCache, fill, generate
from model import GPT, GPTConfig
from tokenizer import BPETokenizer, CharTokenizer, TiktokenTokenizer, from_spec

MLM = ["--objective=mlm", "--batching=lines"]


def tiny(block_size=16, vocab_size=50, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).eval()


def padded(seqs, T, V=50):
    """The sequences padded on the right to T with random tokens (their ids must not matter), and the mask."""
    x = torch.randint(V, (len(seqs), T))
    am = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, :len(s)], am[i, :len(s)] = s, True
    return x, am


# --- the model: attention mask, bidirectional attention, loss ------------------------------------------------

@pytest.mark.parametrize("kw", [dict(causal=False), dict(), dict(causal=False, pos="rope"),
                                dict(causal=False, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False),
                                dict(pos="rope"), dict(causal=False, head="sigmoid")])
def test_padding_never_changes_the_outputs_at_real_positions(kw):
    m = tiny(**kw)
    torch.manual_seed(1)
    seqs = [torch.randint(50, (n,)) for n in (5, 16, 9, 1, 0)]  # the last row is padding only
    x, am = padded(seqs, 16)
    logits, lp = m(x, attention_mask=am)[0], m.log_probs(x, am)
    assert torch.isfinite(logits).all() and torch.isfinite(lp).all()  # no NaN, not even at padding
    for i, s in enumerate(seqs[:-1]):
        alone = m(s[None])[0][0]  # no padding, no mask: the plain path
        assert torch.allclose(logits[i, :len(s)], alone, atol=1e-5), i
        assert torch.allclose(lp[i, :len(s)], m.log_probs(s[None])[0], atol=1e-5), i


@pytest.mark.parametrize("causal", [True, False])
def test_masked_attention_equals_a_naive_reference(causal):
    m = tiny(causal=causal)
    attn = m.transformer.h[0].attn
    torch.manual_seed(2)
    B, T, C, nh = 3, 7, 32, 2
    x = torch.randn(B, T, C)
    am = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 7], dtype=torch.bool)
    got = attn(x, mask=m.attn_mask(am))
    q, k, v = (t.reshape(B, T, nh, C // nh).transpose(1, 2) for t in attn.c_attn(x).split(C, dim=2))
    att = q @ k.transpose(-2, -1) / math.sqrt(C // nh)  # (B, nh, T, T)
    for b in range(B):
        for i in range(T):
            for j in range(T):  # key j is visible to query i if it is a token (and not in i's future), or i itself
                if not (i == j or (am[b, j] and (j <= i or not causal))):
                    att[b, :, i, j] = float("-inf")
    ref = attn.c_proj((att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
    assert torch.allclose(got, ref, atol=1e-5)


def test_bidirectional_attention_looks_ahead_and_causal_does_not():
    torch.manual_seed(3)
    idx = torch.randint(50, (2, 16))
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 50  # one future token
    am = torch.ones(2, 16, dtype=torch.bool)
    for mask in (None, am):  # the plain path and the attention-mask path
        bi, ca = tiny(causal=False), tiny()
        a, b = bi(idx, attention_mask=mask)[0], bi(changed, attention_mask=mask)[0]
        assert ((a[:, :10] - b[:, :10]).abs().amax(-1) > 1e-4).all()  # every earlier position sees it
        a, b = ca(idx, attention_mask=mask)[0], ca(changed, attention_mask=mask)[0]
        assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)


@pytest.mark.parametrize("head", ["softmax", "sigmoid", "bayes"])
def test_loss_is_the_heads_loss_on_chosen_real_positions_only(head):
    m = tiny(causal=False, head=head)
    torch.manual_seed(4)
    x, am = padded([torch.randint(50, (n,)) for n in (16, 10, 4)], 16)
    y = torch.randint(50, (3, 16))
    chosen = torch.rand(3, 16) < 0.3
    chosen[0, 0] = chosen[2, 10] = True  # (2, 10) is padding: it holds a target that must be ignored
    torch.manual_seed(5)
    logits, loss = m(x, torch.where(chosen, y, -1), am)
    sel = chosen & am
    z, t = logits[sel], y[sel]
    if head == "softmax":
        ref = F.cross_entropy(z, t)
    elif head == "sigmoid":
        ref = F.binary_cross_entropy_with_logits(z, F.one_hot(t, 50).float(), reduction="sum") / len(t)
    else:  # eval mode: the NLL of the averaged prediction, with the same weight draws
        torch.manual_seed(5)
        ref = F.nll_loss(m.log_probs(x, am)[sel], t)
    assert torch.allclose(loss, ref, atol=1e-5)


@pytest.mark.parametrize("head", ["softmax", "sigmoid", "bayes"])
def test_a_batch_without_targets_has_zero_loss_not_nan(head):
    m = tiny(causal=False, head=head).train()
    _, loss = m(torch.randint(50, (2, 16)), torch.full((2, 16), -1))
    loss.backward()
    assert loss.item() == 0.0


def test_what_each_kind_of_model_refuses(tmp_path):
    bi, ca = tiny(causal=False), tiny()
    idx, am = torch.zeros((1, 4), dtype=torch.long), torch.ones((1, 4), dtype=torch.bool)
    with pytest.raises(ValueError, match="bidirectional .*use fill"):
        generate(bi, idx, 3)
    with pytest.raises(ValueError, match="fill needs a bidirectional model"):
        fill(ca, idx, 49)
    with pytest.raises(ValueError, match="KV cache"):
        ca.hidden(idx, KVCache(ca.config), attention_mask=am)
    with pytest.raises(ValueError, match="KV cache"):
        bi.hidden(idx, KVCache(bi.config))
    with pytest.raises(ValueError, match="GPT-2 is causal"):
        export_hf(bi, str(tmp_path / "hf"))


# --- masking -----------------------------------------------------------------------------------------------

def near(count, total, p):
    """Within 5 standard deviations of a binomial's mean."""
    return abs(count - total * p) < 5 * math.sqrt(total * p * (1 - p))


@pytest.mark.parametrize("prob,p_mask,p_random,padding", [(0.15, 0.8, 0.1, True), (0.5, 0.5, 0.25, False)])
def test_masking_proportions_hold(prob, p_mask, p_random, padding):
    V = 50
    mlm = {"mask": V, "pad": V + 1, "vocab": V, "prob": prob, "p_mask": p_mask, "p_random": p_random}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(V, (400, 500), generator=g)  # 200,000 positions
    real = torch.rand(400, 500, generator=g) < 0.7 if padding else None
    xm, y = batches.mask_tokens(x, real, torch.Generator().manual_seed(1), mlm)
    chosen = y != -1
    real = torch.ones_like(chosen) if real is None else real
    assert not (chosen & ~real).any()  # padding is never chosen
    assert torch.equal(y[chosen], x[chosen]) and torch.equal(xm[~chosen], x[~chosen])
    n = chosen.sum().item()
    assert near(n, real.sum().item(), prob)
    masked, kept = chosen & (xm == V), chosen & (xm == x)
    randomised = chosen & (xm != V) & (xm != x)
    assert near(masked.sum().item(), n, p_mask)
    # a random token is the original one with probability 1/V, and then looks kept
    assert near(randomised.sum().item(), n, p_random * (1 - 1 / V))
    assert near(kept.sum().item(), n, 1 - p_mask - p_random + p_random / V)
    assert xm.max().item() <= V  # random tokens come from the data's vocabulary: never <pad> (or <mask>)
    counts = torch.bincount(xm[randomised], minlength=V).double()
    expected = counts.sum() / V
    assert counts.min() > 0 and ((counts - expected) ** 2 / expected).sum() < 100  # chi-square, 49 dof


def test_mask_and_pad_ids_follow_the_vocabulary_for_every_tokenizer(monkeypatch, shakespeare_text):
    import tiktoken
    ranks = {bytes([i]): i for i in range(256)} | {b"th": 256, b"the": 257}
    local = tiktoken.Encoding(name="gpt2", pat_str=r"""\s?\w+|\s?[^\w\s]+|\s+""", mergeable_ranks=ranks,
                              special_tokens={"<|endoftext|>": 258})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: local)  # tests never need the network
    cfg = train.TrainConfig(objective="mlm")
    for tok in (CharTokenizer.from_text(shakespeare_text), BPETokenizer.train(shakespeare_text[:20000], 300),
                TiktokenTokenizer("gpt2")):
        spec, mlm = batches.mlm_setup({"tokenizer": tok.to_spec(), "vocab_size": tok.vocab_size}, cfg)
        new = from_spec(spec)
        assert (new.special_tokens["<mask>"], new.special_tokens["<pad>"]) == (mlm["mask"], mlm["pad"]) == (
            tok.vocab_size, tok.vocab_size + 1)
        assert new.vocab_size == tok.vocab_size + 2 and mlm["vocab"] == tok.vocab_size
        text = "First Citizen:\nthe other"
        assert new.encode(text) == tok.encode(text)  # the data's ids are unchanged
        assert new.encode("a<mask>b", allowed_special={"<mask>"}) == tok.encode("a") + [mlm["mask"]] + tok.encode("b")
        assert new.decode([mlm["mask"], mlm["pad"]]) == "<mask><pad>"
        with pytest.raises(UserError, match="already has <mask> and <pad>"):
            batches.mlm_setup({"tokenizer": spec, "vocab_size": new.vocab_size}, cfg)


# --- batching='lines' --------------------------------------------------------------------------------------

def reference_pieces(ids, sep, size, step):
    """Plain Python: a document ends just past each occurrence of sep; each is cut into pieces of at most
    `size` tokens `step` apart; pieces under 2 tokens are dropped."""
    docs, start = [], 0
    for i in range(len(ids)):
        if i + 1 >= len(sep) and ids[i + 1 - len(sep):i + 1] == sep:
            docs.append((start, i + 1))
            start = i + 1
    docs.append((start, len(ids)))
    out = []
    for s, e in docs:
        k = s
        while True:
            if min(size, e - k) >= 2:
                out.append([k, min(size, e - k)])
            if k + size >= e:
                break
            k += step
    return out


@pytest.mark.parametrize("sep", [[0, 0], [7]])
@pytest.mark.parametrize("size,step", [(9, 8), (8, 8), (3, 2)])
def test_document_pieces_equal_a_plain_python_reference(sep, size, step):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 8, 3000)  # 0 and 7 are common: runs like 0 0 0 and 7 7 happen
    data = ids.astype(np.uint16)
    got = batches.doc_pieces(data, sep, size, step)
    assert got.tolist() == reference_pieces(ids.tolist(), sep, size, step)
    assert np.array_equal(batches.doc_ends(data, sep, chunk=5), batches.doc_ends(data, sep))  # chunk edges
    if size == step:  # no overlap: every token of every document of 2+ tokens is in exactly one piece
        covered = np.zeros(len(data), int)
        for s, n in got:
            covered[s:s + n] += 1
        assert covered.max() == 1 and covered.sum() > 0.9 * len(data)


def test_lines_are_shakespeares_speeches(data_dir, shakespeare_text):
    meta = json.load(open(os.path.join(data_dir, "shakespeare_char", "meta.json")))
    data = np.memmap(os.path.join(data_dir, "shakespeare_char", "val.bin"), dtype=np.uint16, mode="r")
    tok = from_spec(meta["tokenizer"])
    pieces = batches.line_pieces(data, meta, "mlm", 10 ** 6)  # a context longer than any speech: whole speeches
    text = tok.decode(data)
    speeches = [s + "\n\n" for s in text.split("\n\n")]
    speeches[-1] = speeches[-1][:-2]
    assert [tok.decode(data[s:s + n]) for s, n in pieces] == [s for s in speeches if len(s) >= 2]
    short = batches.line_pieces(data, meta, "clm", 32)
    assert short[:, 1].max() == 33 and short[:, 1].min() >= 2  # clm: block_size + 1 tokens make 32 pairs


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_piece_batch_pads_on_the_right(objective):
    data = np.arange(100, dtype=np.uint16)
    pieces = np.array([[0, 5], [10, 3], [20, 8]])
    x, y, real = batches.piece_batch(data, pieces, [2, 0, 1], objective, pad=99)
    rows = [list(range(20, 28)), list(range(0, 5)), list(range(10, 13))]
    cut = 1 if objective == "clm" else 0
    L = 8 - cut
    for i, r in enumerate(rows):
        n = len(r) - cut
        assert x[i].tolist() == r[:n] + [99] * (L - n)
        assert y[i].tolist() == r[cut:] + [-1] * (L - n)
        assert real[i].tolist() == [True] * n + [False] * (L - n)


# --- fill --------------------------------------------------------------------------------------------------

def reference_fill(m, idx, mask_id):
    """Greedy fill, most confident first, one position at a time, in loops."""
    idx = idx.clone()
    while (idx == mask_id).any():
        lp = m.log_probs(idx)[0]
        best = None
        for t in range(idx.size(1)):
            if idx[0, t] == mask_id:
                p, tok = lp[t, :mask_id].max(0)
                if best is None or p > best[0]:
                    best = (p, t, tok)
        idx[0, best[1]] = best[2]
    return idx


def test_fill_equals_a_reference_and_never_writes_a_special_token():
    m = tiny(causal=False, vocab_size=52, head="sigmoid")
    with torch.no_grad():
        m.lm_bias[51] = 20.0  # <pad> (51) is the likeliest token everywhere: fill must not take it
        for block in m.transformer.h:  # sharper attention, so the order of filling matters
            block.attn.c_attn.weight.mul_(5)
    torch.manual_seed(6)
    rows = []
    for n_masks in (1, 4, 9):
        idx = torch.randint(50, (1, 16))
        idx[0, torch.randperm(16)[:n_masks]] = 50
        got = fill(m, idx, 50, greedy=True)
        assert torch.equal(got, fill(m, idx, 50, temperature=0.0))  # temperature 0 is greedy too
        assert torch.equal(got, reference_fill(m, idx, 50))
        assert got.max() < 50 and torch.equal(got[idx != 50], idx[idx != 50])
        rows.append(idx)
    batch = torch.cat(rows)  # rows with different numbers of masks fill as they do alone
    assert torch.equal(fill(m, batch, 50, greedy=True), torch.cat([fill(m, r, 50, greedy=True) for r in rows]))
    torch.manual_seed(7)
    a = fill(m, batch, 50, temperature=1.0, top_k=10)
    torch.manual_seed(7)
    assert torch.equal(a, fill(m, batch, 50, temperature=1.0, top_k=10)) and a.max() < 50


# --- training, evaluation and the scripts ------------------------------------------------------------------

def test_mlm_on_lines_learns_resumes_exactly_and_evaluates(data_dir, tmp_path):
    common = [*TINY, f"--data_dir={data_dir}", *MLM, "--lr_decay_iters=40", "--eval_interval=10",
              "--log_interval=1", "--dropout=0.1"]
    ra, rb = uninterrupted_and_resumed(common, tmp_path, 40, 20)
    a = str(tmp_path / "a")
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]
    for x, y in zip(ra, rb):  # the same batches, masks and dropout: the same numbers
        assert all(x.get(k) == y.get(k) for k in ("loss", "train_loss", "val_loss")), (x, y)
    evals = [r["val_loss"] for r in ra if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.3  # from ~ln(67) towards the characters' frequencies
    ckpt = torch.load(os.path.join(a, "ckpt.pt"), weights_only=True)
    assert ckpt["model_config"]["causal"] is False and ckpt["model_config"]["vocab_size"] == 67
    assert from_spec(ckpt["tokenizer"]).special_tokens == {"<mask>": 65, "<pad>": 66}

    r = evaluate.run(evaluate.EvalConfig(out_dir=a, max_tokens=3000, device="cpu"))
    again = evaluate.run(evaluate.EvalConfig(out_dir=a, max_tokens=3000, device="cpu", batch_size=5))
    assert (r["objective"], r["batching"]) == ("mlm", "lines") and r["tokens"] == again["tokens"]
    assert r["nll"] == pytest.approx(again["nll"], abs=1e-6) and r["acc"] == again["acc"]
    # the masked-token NLL and accuracy, recomputed here from the model's logits on the same masked pieces
    m = GPT(GPTConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])
    m.eval()
    meta = json.load(open(os.path.join(data_dir, "shakespeare_char", "meta.json")))
    val = np.memmap(os.path.join(data_dir, "shakespeare_char", "val.bin"), dtype=np.uint16, mode="r")
    pieces = batches.line_pieces(val, meta, "mlm", 32)
    pieces = pieces[:np.searchsorted(np.cumsum(pieces[:, 1]), 3000, side="right")]
    x, _, am = batches.piece_batch(val, pieces, np.arange(len(pieces)), "mlm", 66)
    x, y = batches.mask_tokens(x, am, torch.Generator().manual_seed(1337), batches.mlm_setup(meta, train.TrainConfig())[1])
    assert r["tokens"] == (y != -1).sum().item() and near(r["tokens"], am.sum().item(), 0.15)
    with torch.no_grad():
        z = m(x, attention_mask=am)[0][y != -1]
    assert r["nll"] == pytest.approx(F.cross_entropy(z, y[y != -1]).item(), abs=1e-5)
    assert r["acc"] == pytest.approx((z.argmax(-1) == y[y != -1]).float().mean().item(), abs=1e-6)


def test_causal_fine_tuning_on_lines_and_what_cannot_be_fine_tuned(data_dir, tmp_path):
    base, ft = str(tmp_path / "base"), str(tmp_path / "ft")
    common = [*TINY, f"--data_dir={data_dir}", "--lr_decay_iters=30"]
    train.main([*common, f"--out_dir={base}", "--max_iters=30", "--eval_interval=30"])
    train.main([*common, f"--out_dir={ft}", "--batching=lines", f"--init_from={base}/ckpt.pt", "--max_iters=30",
                "--eval_interval=15"])
    evals = [r["val_loss"] for r in read_metrics(ft) if "val_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]
    ckpt = torch.load(os.path.join(ft, "ckpt.pt"), weights_only=True)
    assert ckpt["model_config"]["causal"] is True and ckpt["model_config"]["vocab_size"] == 65
    assert "<mask>" not in from_spec(ckpt["tokenizer"]).special_tokens
    with pytest.raises(UserError, match="causal=True"):  # a causal model is no start for a masked one
        train.main([*common, f"--out_dir={tmp_path / 'x'}", "--objective=mlm", f"--init_from={base}/ckpt.pt",
                    "--max_iters=1"])


def test_two_processes_equal_one_for_mlm_on_lines(data_dir, tmp_path):
    from test_ddp import assert_same_run, common, rows, torchrun
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train.main([*common(data_dir), *MLM, f"--out_dir={one}", "--max_iters=20"])
    r = torchrun(*common(data_dir), *MLM, f"--out_dir={two}", "--max_iters=20")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(rows(one), rows(two), rtol=1e-4)  # the same pieces and masks, split between the ranks


def test_fill_on_the_command_line_and_the_errors(data_dir, tmp_path):
    mlm, clm = str(tmp_path / "mlm"), str(tmp_path / "clm")
    train.main([*TINY, f"--data_dir={data_dir}", *MLM, f"--out_dir={mlm}", "--max_iters=10", "--eval_interval=10"])
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={clm}", "--max_iters=2", "--eval_interval=2"])
    r = run_script("sample.py", f"--out_dir={mlm}", "--fill", "ROMEO:\nI <mask><mask> thee", "--greedy",
                   "--num_samples=1", "--device=cpu")
    assert r.returncode == 0, r.stderr
    out = r.stdout.rstrip("\n")
    assert out.startswith("ROMEO:\nI ") and out.endswith(" thee") and len(out) == len("ROMEO:\nI ab thee")
    assert "2 masks filled" in r.stderr
    for args, message in [((f"--out_dir={mlm}",), "is a masked language model"),
                          ((f"--out_dir={clm}", "--fill", "a<mask>"), "--fill needs a masked language model"),
                          ((f"--out_dir={mlm}", "--fill", "no mask"), "has no <mask>"),
                          ((f"--out_dir={mlm}", "--fill", "<mask>" * 40), "reads at most 32")]:
        r = run_script("sample.py", *args, "--device=cpu")
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    for args, message in [(("--objective=bert",), "unknown objective 'bert'; choose clm or mlm"),
                          (("--batching=docs",), "choose packed or lines"),
                          (("--objective=mlm", "--mlm_mask=0.95"), "a sum of at most 1"),
                          (("--objective=mlm", "--init_from=gpt2"), "GPT-2's weights are a causal model")]:
        r = run_script("train.py", *TINY, f"--data_dir={data_dir}", *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    r = run_script("evaluate.py", f"--out_dir={mlm}", "--max_tokens=2000", "--device=cpu")
    assert r.returncode == 0, r.stderr
    assert "masked tokens: NLL" in r.stdout and "accuracy" in r.stdout


def test_the_mlm_config():
    cfg = configure(train.TrainConfig, [os.path.join(ROOT, "config", "shakespeare_char_mlm.py")])
    assert (cfg.objective, cfg.batching) == ("mlm", "lines")
    assert (cfg.mlm_prob, cfg.mlm_mask, cfg.mlm_random) == (0.15, 0.8, 0.1)  # BERT's, the defaults
    assert cfg.lr_decay_iters == cfg.max_iters
    m = GPT(train.model_config(cfg, 65 + 2))
    assert m.config.causal is False and abs(m.num_params() - 0.6e6) < 0.05e6  # "0.6M parameters"
