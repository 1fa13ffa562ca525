"""The compiled decode step (generate.stream with compile=True): a static KV cache, written in place at a position
held in a tensor, read whole under a mask. First its logic alone, with torch.compile replaced by the plain
function (quick, every head and architecture); then compiled for real, against the eager paths."""

import pytest
import torch
from torch._dynamo.utils import counters

import generate
from conftest import ops_seen
from generate import KVCache, last_logits, stream
from heads import HEADS
from model import GPT, GPTConfig

MODELS = [dict(head=h) for h in HEADS] + [dict(pos="rope", norm="rmsnorm", mlp="swiglu")]
NAMES = [*HEADS, "llama"]


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, **kw)).eval()


def three_ways(m, prompt, n, **kw):
    """The tokens of the compiled path, the eager cached path and the cache-free path, each from the same seed."""
    outs = []
    for way in (dict(compile=True), {}, dict(use_cache=False)):
        torch.manual_seed(7)
        outs.append(generate.generate(m, prompt, n, **way, **kw))
    return outs


@pytest.fixture
def uncompiled(monkeypatch):
    monkeypatch.setattr(generate, "_compiled", {"cpu": last_logits})


@pytest.mark.parametrize("kw", MODELS, ids=NAMES)
def test_the_static_cache_predicts_what_the_cache_free_forward_does(kw):
    m = tiny(**kw)
    idx = torch.randint(50, (3, 16))
    cache = KVCache(m.config)
    with torch.no_grad():
        last_logits(m, idx[:, :4], cache)  # the prompt, eagerly
        cache.make_static()
        for t in range(4, 16):
            z, _ = last_logits(m, idx[:, t:t + 1], cache)  # every shape the same at every step
            cache.pos += 1
            ref, _ = last_logits(m, idx[:, :t + 1])
            assert torch.allclose(z, ref, atol=1e-5), t
    assert cache.pos.item() == 16


@pytest.mark.parametrize("kw", MODELS, ids=NAMES)
@pytest.mark.parametrize("prompt_len", [1, 6, 20])  # 20 > block_size 16: the prompt itself is cut
def test_static_cache_decoding_gives_the_eager_tokens(uncompiled, kw, prompt_len):
    m = tiny(**kw)
    prompt = torch.randint(50, (2, prompt_len))
    for sampling in (dict(greedy=True), dict(temperature=0.9, top_p=0.95)):
        static, cached, free = three_ways(m, prompt, 40, **sampling)  # 40 tokens: well past block_size
        assert torch.equal(static, cached) and torch.equal(static, free), sampling


def test_compile_needs_the_cache():
    with pytest.raises(ValueError, match="static KV cache"):
        generate.generate(tiny(), torch.zeros((1, 1), dtype=torch.long), 5, use_cache=False, compile=True)


@pytest.mark.parametrize("kw", MODELS, ids=NAMES)
def test_compiled_decoding_gives_the_eager_tokens(kw):
    torch.compiler.reset()  # each model its own graphs, far from torch's limit on recompiles of one function
    m = tiny(**kw)
    prompt = torch.randint(50, (2, 5))
    graphs = counters["stats"]["unique_graphs"]
    compiled, cached, free = three_ways(m, prompt, 30, greedy=True)  # inside the context, then past it
    assert counters["stats"]["unique_graphs"] - graphs == 2  # the decode step and the window: it did compile
    assert torch.equal(compiled, cached) and torch.equal(compiled, free)
    compiled, cached, _ = three_ways(m, prompt, 30, temperature=1.0, top_k=20)  # the same graphs, sampled
    assert counters["stats"]["unique_graphs"] - graphs == 2
    assert torch.equal(compiled, cached)


def test_a_finished_stream_stops_within_a_check():
    m = tiny()
    free = generate.generate(m, torch.zeros((1, 1), dtype=torch.long), 40, greedy=True)
    stop = free[0, 3].item()
    first = (free[0, 1:] == stop).nonzero()[0].item() + 1  # where it is first generated
    new = torch.cat(list(stream(m, torch.zeros((1, 1), dtype=torch.long), 40, greedy=True, stop_token=stop)), 1)
    # the stream looks for "every row done" every CHECK_EVERY tokens only (a look waits for the device)
    assert new.size(1) == -(-first // generate.CHECK_EVERY) * generate.CHECK_EVERY
    assert torch.equal(new[0, :first], free[0, 1:first + 1]) and (new[0, first:] == stop).all()


def test_the_stream_waits_for_the_device_once_per_check_not_per_token():
    m = tiny()
    for stop, want in ((None, 0), (49, 40 // generate.CHECK_EVERY)):  # 49: never generated here
        with ops_seen() as ops:  # a host read of a value (.item(), bool(t)) runs _local_scalar_dense
            new = list(stream(m, torch.zeros((1, 1), dtype=torch.long), 40, greedy=True, stop_token=stop))
        reads = sum(f == torch.ops.aten._local_scalar_dense.default for f, _ in ops.seen)
        assert len(new) == 40 and reads == want and 49 not in torch.cat(new).tolist()
