import math

import pytest
import torch
import torch.nn.functional as F

from generate import KVCache, filter_log_probs, generate
from model import GPT, GPTConfig


def tiny(block_size=16, vocab_size=50, **kw):
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, **kw)
    return GPT(cfg).eval()


def test_shapes_and_loss():
    m = tiny()
    idx = torch.randint(50, (3, 16))
    logits, loss = m(idx)
    assert logits.shape == (3, 16, 50) and loss is None
    targets = torch.randint(50, (3, 16))
    targets[0, :5] = -1
    logits, loss = m(idx, targets)
    ref = F.cross_entropy(logits.view(-1, 50), targets.view(-1), ignore_index=-1)
    assert torch.allclose(loss, ref)
    with pytest.raises(ValueError, match="longer than block_size"):
        m(torch.zeros((1, 17), dtype=torch.long))


def test_loss_at_init_is_close_to_uniform():
    m = tiny(vocab_size=512)
    torch.manual_seed(1)
    _, loss = m(torch.randint(512, (8, 16)), torch.randint(512, (8, 16)))
    assert abs(loss.item() - math.log(512)) < 0.1


def assert_causal(m):
    """Changing tokens from position 10 on changes the logits there and never before."""
    idx = torch.randint(50, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    a, b = m(idx)[0], m(changed)[0]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_causal_masking():
    assert_causal(tiny())


def test_log_probs_are_normalised_softmax():
    m = tiny()
    idx = torch.randint(50, (2, 16))
    lp = m.log_probs(idx)
    assert lp.shape == (2, 16, 50)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 16), atol=1e-5)
    assert torch.allclose(lp, F.log_softmax(m(idx)[0], -1), atol=1e-6)


def test_cache_prefill_and_steps_match_full_forward():
    assert_prefill_and_steps_match_full_forward(tiny())


def assert_prefill_and_steps_match_full_forward(m):
    """Logits from the KV cache, fed a prompt of 5, a chunk of 4, then single tokens, equal a full forward."""
    idx = torch.randint(50, (2, 16))
    full = m(idx)[0]
    cache = KVCache(m.config)
    parts = [m.lm_head(m.hidden(idx[:, :5], cache))]  # a prompt of 5, a chunk of 4, then single tokens
    parts.append(m.lm_head(m.hidden(idx[:, 5:9], cache)))
    parts += [m.lm_head(m.hidden(idx[:, t:t + 1], cache)) for t in range(9, 16)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def reference_generate(m, idx, n, **kw):
    """The plainest possible sampler: full forward over the last block_size tokens, every step."""
    for _ in range(n):
        logp = F.log_softmax(m(idx[:, -m.config.block_size:])[0][:, -1], -1)
        if kw.get("greedy"):
            nxt = logp.argmax(-1, keepdim=True)
        else:
            nxt = torch.multinomial(filter_log_probs(logp / kw.get("temperature", 1.0), kw.get("top_k"),
                                                     kw.get("top_p")).exp(), 1)
        idx = torch.cat([idx, nxt], 1)
    return idx


@pytest.mark.parametrize("kw", [dict(greedy=True), dict(), dict(temperature=0.7, top_k=10),
                                dict(top_p=0.8), dict(temperature=1.3, top_k=20, top_p=0.9)])
@pytest.mark.parametrize("prompt_len", [1, 7, 40])  # 40 > block_size: the prompt itself is cropped
def test_kv_cache_generation_equals_cache_free(kw, prompt_len):
    assert_generation_paths_agree(tiny(block_size=16), prompt_len, kw)


def assert_generation_paths_agree(m, prompt_len, kw):
    """With the cache, without it, and the reference sampler: the same 45 tokens (block_size 16: well past it)."""
    torch.manual_seed(5)
    idx = torch.randint(50, (2, prompt_len))
    outs = []
    for gen in (lambda: generate(m, idx, 45, **kw), lambda: generate(m, idx, 45, use_cache=False, **kw),
                lambda: reference_generate(m, idx, 45, **kw)):
        torch.manual_seed(123)
        outs.append(gen())
    assert outs[0].shape == (2, prompt_len + 45)  # 45 new tokens run well past block_size 16
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_stop_token_ends_generation():
    m = tiny()
    out = generate(m, torch.zeros((1, 1), dtype=torch.long), 30, greedy=True)
    stop = out[0, 5].item()
    stopped = generate(m, torch.zeros((1, 1), dtype=torch.long), 30, greedy=True, stop_token=stop)
    first = (stopped[0, 1:] == stop).nonzero()[0].item() + 1
    assert stopped.size(1) == first + 1 and torch.equal(stopped[0], out[0, :first + 1])


def test_a_stop_token_in_the_prompt_does_not_stop_generation():
    # GPT-2 is sampled unconditionally from a prompt of <|endoftext|>: the stop token must be one it generates
    m = tiny()
    # a token that the greedy continuation of itself never produces again
    stop = next(t for t in range(50) if t not in generate(m, torch.full((1, 1), t), 20, greedy=True)[0, 1:])
    out = generate(m, torch.full((1, 1), stop), 20, greedy=True, stop_token=stop)
    assert out.shape == (1, 21)


def test_each_row_stops_when_it_generates_the_stop_token():
    m = tiny()
    prompt = torch.tensor([[0], [7]])
    torch.manual_seed(3)
    free = generate(m, prompt, 30)  # sampled: every row draws every step, so the streams stay aligned

    def at(r, t):  # where row r first generates t, or None
        hits = (free[r, 1:] == t).nonzero()
        return hits[0].item() + 1 if len(hits) else None
    # a token row 0 generates early and does not repeat at once, and row 1 later or never
    stop = next(t for t in free[0, 3:10].tolist() if free[0, at(0, t) + 1] != t and (at(1, t) or 99) > at(0, t))
    first = [at(0, stop), at(1, stop)]
    torch.manual_seed(3)
    out = generate(m, prompt, 30, stop_token=stop)
    end = out.size(1) if first[1] is None else first[1] + 1
    assert out.size(1) == end  # the stream ends when the last row has stopped (or at max_new_tokens)
    for r in (0, 1):  # each row as it would be, then nothing but the stop token
        k = first[r] if first[r] is not None else end - 1
        assert torch.equal(out[r, :k + 1], free[r, :k + 1]) and (out[r, k + 1:] == stop).all()


def reference_filter(logp, top_k, top_p):
    """Per row, in plain Python: sort, keep the top k, then the shortest prefix reaching top_p."""
    out = torch.full_like(logp, float("-inf"))
    for b in range(logp.size(0)):
        order = sorted(range(logp.size(1)), key=lambda i: -logp[b, i].item())
        keep = order[:top_k] if top_k else order
        if top_p is not None:
            probs = [math.exp(logp[b, i].item()) for i in keep]
            total, cut = sum(probs), len(keep)
            acc = 0.0
            for j, p in enumerate(probs):
                acc += p / total
                if acc >= top_p:
                    cut = j + 1
                    break
            keep = keep[:cut]
        z = torch.logsumexp(logp[b, keep], 0)
        out[b, keep] = logp[b, keep] - z
    return out


@pytest.mark.parametrize("top_k,top_p", [(1, None), (5, None), (None, 0.5), (None, 0.9), (8, 0.7),
                                         (None, 1.0), (100, None)])
def test_top_k_top_p_against_reference(top_k, top_p):
    torch.manual_seed(0)
    logp = F.log_softmax(torch.randn(4, 30) * 2, -1)
    got = filter_log_probs(logp, top_k, top_p)
    ref = reference_filter(logp, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    assert torch.allclose(got[~torch.isinf(got)], ref[~torch.isinf(ref)], atol=1e-5)
