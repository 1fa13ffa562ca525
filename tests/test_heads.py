"""The output heads (softmax, sigmoid/BCE, bayes) against torch's own losses and against sampling explicitly."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import heads
import train
from conftest import TINY
from configurator import UserError
from generate import generate
from heads import SigmoidBCE
from model import GPT, GPTConfig

HEADS = ["softmax", "sigmoid", "bayes"]


def small(head, V=11, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=V, n_layer=1, n_head=2, n_embd=8, head=head, **kw))


def test_sigmoid_loss_is_bce_summed_over_the_vocabulary():
    m = small("sigmoid").eval()
    with torch.no_grad():
        m.lm_bias.normal_()  # away from init, so every term matters
    idx = torch.randint(11, (3, 16))
    y = torch.randint(11, (3, 16))
    y[0, :5] = -1  # ignored positions
    logits, loss = m(idx, y)
    keep = y != -1
    onehot = F.one_hot(y[keep], 11).float()
    ref = F.binary_cross_entropy_with_logits(logits[keep], onehot, reduction="sum") / keep.sum()
    assert torch.allclose(loss, ref, atol=1e-5)


def test_sigmoid_loss_gradient_equals_autograd_of_bce():
    torch.manual_seed(0)
    z = torch.randn(20, 9, dtype=torch.float64, requires_grad=True)
    y = torch.randint(9, (20,))
    y[:4] = -1
    m = small("sigmoid", V=9)
    m.head_loss(z, y).backward()
    ours = z.grad.clone()
    z.grad = None
    keep = y != -1
    F.binary_cross_entropy_with_logits(z[keep], F.one_hot(y[keep], 9).double(), reduction="sum").div(
        keep.sum()).backward()
    assert torch.allclose(ours, z.grad) and (ours[:4] == 0).all()
    torch.autograd.gradcheck(SigmoidBCE.apply, (z.detach().requires_grad_(), torch.arange(20), y.clamp_min(0)))


def test_sigmoid_loss_with_target_sets_is_bce_against_a_multi_hot_target():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 9, requires_grad=True)
    y = torch.randint(9, (2, 6))
    y[1, 4:] = -1
    sets = [{int(t)} | set(torch.randint(9, (int(torch.randint(4, ())),)).tolist()) for t in y.flatten()]
    rows = torch.tensor([i for i, s in enumerate(sets) for _ in s])
    cols = torch.tensor([j for s in sets for j in sorted(s)])
    m = small("sigmoid", V=9)
    loss = m.head_loss(z, y, target_sets=(rows, cols))
    loss.backward()
    ours = z.grad.clone()
    z.grad = None
    multi_hot = torch.zeros(12, 9)
    for i, s in enumerate(sets):
        multi_hot[i, list(s)] = 1
    keep = y.flatten() != -1
    ref = F.binary_cross_entropy_with_logits(z.view(12, 9)[keep], multi_hot[keep], reduction="sum") / keep.sum()
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-5) and torch.allclose(ours, z.grad, atol=1e-6)
    assert multi_hot.sum() > 12  # some sets have more than the one token
    torch.autograd.gradcheck(SigmoidBCE.apply, (z.detach().double().view(12, 9).requires_grad_(), rows, cols))
    # the fast Function against heads.py's reference formula: values and gradients
    zz = z.detach().view(12, 9).requires_grad_()
    w = torch.randn(12)  # an uneven incoming gradient
    (SigmoidBCE.apply(zz, rows, cols) * w).sum().backward()
    fast = zz.grad.clone()
    zz.grad = None
    (heads.sigmoid_bce_reference(zz, rows, cols) * w).sum().backward()
    assert torch.allclose(fast, zz.grad, atol=1e-6)
    assert torch.allclose(SigmoidBCE.apply(zz, rows, cols), heads.sigmoid_bce_reference(zz, rows, cols), atol=1e-5)
    with pytest.raises(ValueError, match="sigmoid head"):
        small("softmax", V=9).head_loss(z, y, target_sets=(rows, cols))


def test_sigmoid_loss_at_init_is_log_v_plus_one():
    V = 500
    m = small("sigmoid", V=V)
    _, loss = m(torch.randint(V, (4, 16)), torch.randint(V, (4, 16)))
    # every sigma(z) ~ 1/V: V * softplus(-log(V-1)) + log(V-1) = V log(V/(V-1)) + log(V-1) ~ 1 + ln V
    assert abs(loss.item() - (1 + math.log(V))) < 0.05


@pytest.mark.parametrize("head", HEADS)
def test_log_probs_are_normalised(head):
    m = small(head).eval()
    with torch.no_grad():
        logp = m.log_probs(torch.randint(11, (2, 16)))
    assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 16), atol=1e-5)


def test_sigmoid_distribution_is_sigma_over_its_sum():
    m = small("sigmoid").eval()
    idx = torch.randint(11, (2, 16))
    with torch.no_grad():
        s = torch.sigmoid(m(idx)[0])
        assert torch.allclose(m.log_probs(idx).exp(), s / s.sum(-1, keepdim=True), atol=1e-6)


def test_bayes_kl_matches_monte_carlo():
    m = small("bayes", bayes_prior_std=0.5, bayes_init_std=0.05)
    with torch.no_grad():
        m.lm_rho.add_(0.5 * torch.randn_like(m.lm_rho))  # different sigmas per weight
        mu, sigma = m.lm_head.weight, F.softplus(m.lm_rho)
        q, p = torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 0.5)
        g = torch.Generator().manual_seed(0)
        est = []
        for _ in range(400):
            w = mu + sigma * torch.randn(mu.shape, generator=g)
            est.append((q.log_prob(w) - p.log_prob(w)).sum())
        est = torch.stack(est)
        kl = m.head.regulariser(m)
    assert abs(kl - est.mean()) < 4 * est.std() / 20  # within 4 standard errors of the MC mean
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).sum(), rtol=1e-5)


@pytest.mark.parametrize("rows", [None, 3])  # one block of rows (the default here), or several
def test_bayes_kl_and_its_gradients_equal_autograd_of_torch_distributions(rows, monkeypatch):
    m = small("bayes", bayes_prior_std=0.5, bayes_init_std=0.05)
    if rows:
        monkeypatch.setattr(heads, "BLOCK", rows * m.config.n_embd)
    with torch.no_grad():
        m.lm_rho.add_(2 * torch.randn_like(m.lm_rho))  # sigmas from ~0.001 to ~2, around the prior's 0.5
    kl = m.head.regulariser(m)
    (3 * kl).backward()
    mine = m.lm_head.weight.grad.clone(), m.lm_rho.grad.clone()
    m.zero_grad()
    q = torch.distributions.Normal(m.lm_head.weight, F.softplus(m.lm_rho))
    reference = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 0.5)).sum()
    assert torch.allclose(kl, reference, rtol=1e-5)
    (3 * reference).backward()
    assert torch.allclose(mine[0], m.lm_head.weight.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(mine[1], m.lm_rho.grad, rtol=1e-4, atol=1e-6)
    m.zero_grad()  # and against heads.py's reference formula
    formula = heads.gaussian_kl_reference(m.lm_head.weight, m.lm_rho, 0.5)
    assert torch.allclose(kl, formula, rtol=1e-5)
    (3 * formula).backward()
    assert torch.allclose(mine[0], m.lm_head.weight.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(mine[1], m.lm_rho.grad, rtol=1e-4, atol=1e-6)


def test_bayes_training_loss_refuses_a_second_backward():
    m = small("bayes").train()
    loss = m(torch.randint(11, (2, 16)), torch.randint(11, (2, 16)))[1]
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_local_reparameterisation_has_the_moments_of_weight_sampling():
    m = small("bayes", bayes_init_std=0.3)
    h = torch.randn(4, 8)
    with torch.no_grad():
        mu, sigma = m.lm_head.weight, F.softplus(m.lm_rho)
        g = torch.Generator().manual_seed(0)
        explicit = torch.stack([h @ (mu + sigma * torch.randn(mu.shape, generator=g)).t() for _ in range(20000)])
        mean, std = m.logits(h), heads.logit_std(h, m.lm_rho)
        torch.manual_seed(1)
        lrt = mean + std * torch.randn(20000, *mean.shape)
    for draws in (explicit, lrt):
        assert torch.allclose(draws.mean(0), mean, atol=4 * std.max().item() / math.sqrt(20000))
        assert torch.allclose(draws.std(0), std, rtol=0.05)


@pytest.mark.parametrize("rows", [None, 1, 5])  # one block of rows (the default here), or many
def test_bayes_training_loss_and_gradients_equal_autograd_of_the_formula(rows, monkeypatch):
    m = small("bayes", bayes_init_std=0.5).train()
    V = m.config.vocab_size
    if rows:
        monkeypatch.setattr(heads, "BLOCK", rows * V)
    idx, y = torch.randint(11, (2, 16)), torch.randint(11, (2, 16))
    y[0, :3] = -1
    grads = []
    for fused in (True, False):
        m.zero_grad()
        torch.manual_seed(3)  # the same noise draws for both: one (rows, V) draw per block, in order
        if fused:
            loss = m(idx, y)[1]
        else:
            h = m.hidden(idx).flatten(0, 1)
            eps = torch.cat([torch.randn(len(b), V) for b in torch.arange(32).split(rows or 32)])
            ce = heads.sampled_ce_reference(m.logits(h), h, m.lm_rho, y.flatten().clamp_min(0), eps)
            loss = ce[y.flatten() != -1].mean()  # heads.py's reference formula, over the targets that count
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_bayes_with_sigma_to_zero_is_the_softmax_head():
    soft, bayes = small("softmax").eval(), small("bayes").eval()
    bayes.load_state_dict(soft.state_dict() | {"lm_rho": torch.full_like(bayes.lm_rho, -60.0)}, strict=True)
    idx, y = torch.randint(11, (2, 16)), torch.randint(11, (2, 16))
    with torch.no_grad():
        assert torch.allclose(bayes.log_probs(idx), soft.log_probs(idx), atol=1e-5)
        assert torch.allclose(bayes(idx, y)[1], soft(idx, y)[1], atol=1e-5)
        bayes.train(), soft.train()  # the training loss too (one draw, of zero noise)
        assert torch.allclose(bayes(idx, y)[1], soft(idx, y)[1], atol=1e-6)


def test_bayes_prediction_averages_probabilities_not_logits():
    m = small("bayes", bayes_init_std=1.0, bayes_samples=7).eval()
    h = torch.randn(3, 8)
    with torch.no_grad():
        z, std = m.logits(h), heads.logit_std(h, m.lm_rho)
        torch.manual_seed(5)
        got, expected_entropy = m.head.draw(m, z, h)
        torch.manual_seed(5)
        draws = torch.stack([F.softmax(z + std * torch.randn_like(z), -1) for _ in range(7)])
    assert torch.allclose(got.exp(), draws.mean(0), atol=1e-6)
    assert torch.allclose(expected_entropy, -(draws * draws.log()).sum(-1).mean(0), atol=1e-5)
    averaged_logits = F.log_softmax(z + std * 0, -1)  # what averaging logits would give, roughly
    assert not torch.allclose(got, averaged_logits, atol=1e-3)
    predictive_entropy = -(got.exp() * got).sum(-1)
    assert (predictive_entropy >= expected_entropy - 1e-6).all()  # mutual information >= 0


@pytest.mark.parametrize("head", ["sigmoid", "bayes"])
def test_kv_cache_generation_equals_cache_free(head):
    m = small(head).eval()
    prompt = torch.randint(11, (2, 3))
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        outs.append(generate(m, prompt, 30, temperature=0.9, top_p=0.95, use_cache=use_cache))
    assert torch.equal(outs[0], outs[1])


def test_rho_and_bias_are_not_weight_decayed():
    cfg = train.TrainConfig(weight_decay=0.1, device="cpu")
    for head, name in (("bayes", "lm_rho"), ("sigmoid", "lm_bias")):
        m = small(head)
        opt = train.make_optimizer(m, cfg, "cpu")
        param = getattr(m, name)
        group = next(g for o in opt for g in o.param_groups if any(p is param for p in g["params"]))
        assert group["weight_decay"] == 0.0
    assert any(p is m.lm_head.weight for p in opt[0].param_groups[0]["params"])


@pytest.mark.parametrize("head", ["sigmoid", "bayes"])
def test_every_head_trains_and_samples(head, data_dir, tmp_path):
    from sample import main as sample_main
    out = str(tmp_path / head)
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", f"--head={head}", "--max_iters=100",
                "--lr_decay_iters=100", "--eval_interval=50", "--eval_iters=5", "--log_interval=10"])
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    evals = [r for r in rows if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8  # normalised NLL, from ~ln(65) = 4.17
    steps = [r for r in rows if "loss" in r]
    assert ("kl" in steps[0]) == (head == "bayes")
    sample_main([f"--out_dir={out}", "--max_new_tokens=20", "--num_samples=1", "--device=cpu"])


def test_fine_tune_a_softmax_checkpoint_with_another_head(data_dir, tmp_path):
    def val_losses(out):
        return [json.loads(line)["val_loss"] for line in open(os.path.join(out, "metrics.jsonl"))
                if "val_loss" in line]

    common = [*TINY, f"--data_dir={data_dir}", "--eval_iters=5"]
    base = str(tmp_path / "base")
    train.main([*common, f"--out_dir={base}", "--max_iters=100", "--lr_decay_iters=100", "--eval_interval=50"])
    learned = val_losses(base)[-1]
    assert learned < math.log(65) - 1.0
    for head in ("sigmoid", "bayes"):
        out = str(tmp_path / head)
        train.main([*common, f"--out_dir={out}", f"--head={head}", f"--init_from={base}/ckpt.pt", "--max_iters=0"])
        start = val_losses(out)[0]
        if head == "bayes":  # sigma starts at 3e-3: the softmax model, up to a little noise
            assert abs(start - learned) < 0.02
        else:  # sigma(z - log(V-1)) ~ exp(z)/(V-1) for the logits the softmax model learned: close to it
            assert start < learned + 0.3
    with pytest.raises(UserError, match="n_embd"):
        train.main([*common, f"--out_dir={tmp_path / 'x'}", f"--init_from={base}/ckpt.pt", "--n_embd=64"])


def test_bad_head_settings_are_refused():
    with pytest.raises(ValueError, match="unknown head"):
        GPTConfig(head="probit")
    with pytest.raises(ValueError, match="bayes_samples"):
        GPTConfig(head="bayes", bayes_samples=0)


class Tempered(heads.Softmax):
    """A fourth head, written as docs/heads.md shows: softmax(z / T) with one learned temperature T = exp(tau).
    Everything else (loss, log-probabilities, sampling, evaluation) is the softmax head's, on its logits."""

    def params(self):
        return {"lm_tau": torch.nn.Parameter(torch.zeros(()))}

    def logits(self, m, z):
        return z * torch.exp(-m.lm_tau).to(z.dtype)


def test_a_new_head_is_one_class_in_heads_py(data_dir, tmp_path, monkeypatch, capsys):
    import evaluate
    from sample import main as sample_main
    monkeypatch.setitem(heads.HEADS, "tempered", Tempered)  # what its line in heads.HEADS would do
    out = str(tmp_path / "tempered")
    args = [*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--head=tempered", "--lr_decay_iters=120",
            "--eval_interval=60", "--eval_iters=5", "--log_interval=20"]
    train.main([*args, "--max_iters=60"])
    train.main([*args, "--max_iters=120", "--init_from=resume"])
    evals = [json.loads(line)["val_loss"] for line in open(os.path.join(out, "metrics.jsonl")) if "val_loss" in line]
    assert evals[-1] < evals[0] - 0.8  # it learns, from ~ln(65)
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["model_config"]["head"] == "tempered" and ckpt["model"]["lm_tau"] != 0  # saved, and trained
    m = GPT(GPTConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])
    x = torch.randint(65, (2, 16))
    h = m.hidden(x)
    z = m.lm_head(h)[..., :65] / ckpt["model"]["lm_tau"].exp()  # the head's formula, by hand
    assert torch.allclose(m.log_probs(x), F.log_softmax(z, -1), atol=1e-5)
    assert torch.allclose(m(x, x)[1], F.cross_entropy(z.flatten(0, 1), x.flatten()), atol=1e-5)
    sample_main([f"--out_dir={out}", "--max_new_tokens=20", "--num_samples=1", "--device=cpu"])
    evaluate.main([f"--out_dir={out}", "--device=cpu", "--max_tokens=2000", "--shift=False"])
    r = json.load(open(os.path.join(out, "eval_val.json")))
    assert r["head"] == "tempered" and abs(r["nll"] - evals[-1]) < 0.3 and "mi" not in r


@pytest.mark.parametrize("name", list(heads.HEADS))
def test_every_heads_fast_loss_and_regulariser_equal_its_plain_formula(name, monkeypatch):
    # what bench.py's '-formula' rows time: the interface's plain=True against the training path, with the same
    # noise for bayes (its fast loss draws eps block by block into a buffer; here both draw one full tensor)
    m = small(name).train()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from init, so every term matters
        if name == "bayes":
            m.lm_rho.copy_(torch.randn_like(m.lm_rho) - 0.5)  # sigmas from ~0.1 to ~2, around the prior's 1
    h = torch.randn(12, 8)
    y = torch.randint(11, (12,))
    y[3] = -1  # a token that does not count
    monkeypatch.setattr(heads, "row_blocks", lambda x: [slice(0, len(x))])  # one block: eps drawn in one go
    out = {}
    for plain in (True, False):
        m.zero_grad()
        torch.manual_seed(5)
        loss = m.head.loss(m, m.logits(h).float(), y, h, plain=plain)
        reg = m.head.regulariser(m, plain=plain)
        (loss if reg is None else loss + reg).backward()
        out[plain] = loss.detach(), reg, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    assert torch.allclose(out[True][0], out[False][0], rtol=1e-5)
    assert (out[True][1] is None) == (out[False][1] is None) == (name != "bayes")
    if out[True][1] is not None:
        assert torch.allclose(out[True][1], out[False][1], rtol=1e-5)
    assert out[True][2].keys() == out[False][2].keys() and "transformer.wte.weight" in out[True][2]  # = lm_head, tied
    assert all(torch.allclose(out[True][2][n], out[False][2][n], atol=1e-5) for n in out[True][2])
