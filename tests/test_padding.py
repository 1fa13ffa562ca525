# The padded vocabulary (GPTConfig.vocab_multiple, 64 on GPUs): the output matmul runs over extra rows whose
# ids no token has; nothing else may ever see them. Checked here on CPU, against the same model unpadded.
import os

import pytest
import torch

import checkpoint
import train
from conftest import TINY
from generate import generate
from model import GPT, GPTConfig

V = 65


def twins(head, **kw):
    """The same model unpadded and padded to 128 rows, with equal weights in the real rows."""
    torch.manual_seed(0)
    plain = GPT(GPTConfig(block_size=16, vocab_size=V, n_layer=1, n_head=2, n_embd=16, head=head, **kw))
    padded = GPT(GPTConfig(block_size=16, vocab_size=V, n_layer=1, n_head=2, n_embd=16, head=head,
                           vocab_multiple=64, **kw))
    with torch.no_grad():
        padded.lm_head.weight[V:] = 5.0  # padding rows that would win every argmax, if they were ever looked at
    padded.load_state_dict(checkpoint.fit_vocab(plain.state_dict(), padded.state_dict(), V))
    return plain, padded


@pytest.mark.parametrize("head", ["softmax", "sigmoid", "bayes"])
def test_a_padded_model_computes_what_the_unpadded_one_does(head):
    plain, padded = twins(head)
    assert padded.lm_head.weight.shape == (128, 16) and padded.transformer.wte.weight.shape == (128, 16)
    x, y = torch.randint(V, (3, 16)), torch.randint(V, (3, 16))
    for m in (plain, padded):
        m.zero_grad()
        torch.manual_seed(1)
        logits, loss = m(x, y)
        kl = m.head.regulariser(m)  # bayes: the KL; None for a head without one
        (loss if kl is None else loss + kl).backward()
        m.result = logits, loss
    assert padded.result[0].shape == (3, 16, V)
    assert torch.allclose(plain.result[0], padded.result[0], atol=1e-6)
    assert torch.allclose(plain.result[1], padded.result[1], atol=1e-6)
    assert torch.allclose(plain.lm_head.weight.grad, padded.lm_head.weight.grad[:V], atol=1e-6)
    assert padded.lm_head.weight.grad[V:].abs().max() == 0  # the padding learns nothing, and costs no KL
    if head == "bayes":
        assert torch.allclose(plain.head.regulariser(plain), padded.head.regulariser(padded))
    plain.eval(), padded.eval()
    torch.manual_seed(2)
    a = plain.log_probs(x)
    torch.manual_seed(2)
    b = padded.log_probs(x)
    assert b.shape == (3, 16, V) and torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(b.exp().sum(-1), torch.ones(3, 16), atol=1e-5)  # normalised over the 65 real tokens


def test_padded_ids_are_never_sampled():
    _, padded = twins("softmax")
    padded.eval()
    out = generate(padded, torch.zeros(64, 1, dtype=torch.long), 15, temperature=3.0)  # flat: any id could come
    assert out.max() < V and len(out.unique()) > 30


def test_padding_is_chosen_by_device_and_kept_by_a_resumed_run(data_dir, tmp_path):
    cfg = train.TrainConfig()
    assert train.model_config(cfg, 50257, "cuda").padded_vocab == 50304
    assert train.model_config(cfg, 50257, "cpu").padded_vocab == 50257
    assert train.model_config(cfg, 67, "cuda:1").padded_vocab == 128  # mlm's 65 + <mask> + <pad>
    # a run started on a CPU (unpadded) resumed where the config would pad: it keeps the checkpoint's shape
    out = str(tmp_path / "run")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=4", "--eval_interval=4"])
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    assert ckpt["model_config"]["vocab_multiple"] == 1
    mconf = checkpoint.check_resumable(ckpt, train.model_config(train.TrainConfig(
        **{k: v for k, v in ckpt["config"].items()}), 65, "cuda"), "adamw", out)
    assert mconf.vocab_multiple == 1 and GPT(mconf).lm_head.weight.shape[0] == 65


def test_fine_tuning_and_export_across_paddings(tmp_path):
    plain, padded = twins("softmax")
    # the padded model's real rows go to an unpadded one, and back
    other = GPT(GPTConfig(**{**plain.config.__dict__}))
    checkpoint.fine_tune_from(other, {"model": padded.state_dict(), "model_config": padded.config.__dict__,
                                      "tokenizer": {}}, {})
    assert torch.equal(other.lm_head.weight, plain.lm_head.weight)
    pytest.importorskip("transformers")
    checkpoint.export_hf(padded, str(tmp_path / "hf"))
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"))
    assert hf.config.vocab_size == V and hf.transformer.wte.weight.shape == (V, 16)
    x = torch.randint(V, (2, 16))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, padded(x)[0], atol=1e-4)
