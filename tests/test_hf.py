"""GPT-2 weights in and out through HuggingFace transformers, offline: small random GPT-2s saved to temp folders."""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")  # in requirements-dev.txt: CI always runs these
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

import checkpoint  # noqa: E402
import train  # noqa: E402
from checkpoint import export_hf, from_pretrained  # noqa: E402
from conftest import TINY, run_script  # noqa: E402
from configurator import UserError  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def hf_gpt2(folder, vocab_size=100, n_positions=64, **kw):
    torch.manual_seed(0)
    hc = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                    bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1, **kw)
    hf = GPT2LMHeadModel(hc).eval()
    with torch.no_grad():  # non-trivial biases and norms, not their zero/one init
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(folder)
    return hf


def test_import_gives_the_same_logits(tmp_path):
    hf = hf_gpt2(tmp_path / "hf")
    ours = from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(100, (3, 64))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max() <= 1e-4
        # a shorter block_size keeps the first positions
        short = from_pretrained(str(tmp_path / "hf"), block_size=16).eval()
        assert short.transformer.wpe.weight.shape[0] == 16
        assert (short(idx[:, :16])[0] - hf(idx[:, :16]).logits).abs().max() <= 1e-4


def test_import_with_other_heads(tmp_path):
    hf = hf_gpt2(tmp_path / "hf")
    idx = torch.randint(100, (2, 20))
    with torch.no_grad():
        ref = hf(idx).logits
        sig = from_pretrained(str(tmp_path / "hf"), head="sigmoid").eval()
        assert torch.allclose(sig.lm_bias, torch.full((100,), -torch.log(torch.tensor(99.0))))  # its init
        assert (sig(idx)[0] - sig.lm_bias - ref).abs().max() <= 1e-4
        bay = from_pretrained(str(tmp_path / "hf"), head="bayes", bayes_init_std=1e-3).eval()
        assert (bay(idx)[0] - ref).abs().max() <= 1e-4  # the posterior mean is the pretrained matrix
        assert torch.allclose(torch.nn.functional.softplus(bay.lm_rho), torch.tensor(1e-3))
    with pytest.raises(ValueError, match="n_layer"):
        from_pretrained(str(tmp_path / "hf"), n_layer=3)
    with pytest.raises(ValueError, match="longer than"):
        from_pretrained(str(tmp_path / "hf"), block_size=65)


def test_import_refuses_variants_it_does_not_implement(tmp_path):
    hf_gpt2(tmp_path / "hf", activation_function="relu")
    with pytest.raises(ValueError, match="variant"):
        from_pretrained(str(tmp_path / "hf"))


def test_offline_hub_name_gives_a_clear_error(monkeypatch):
    import huggingface_hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # read once at import: set it where the hub looks now, or the call waits on the network's retries (47 s here)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="HF_HUB_OFFLINE|local folder"):
        from_pretrained("gpt2-this-is-not-cached")


@pytest.mark.parametrize("bias", [True, False])
def test_export_reloads_in_transformers(tmp_path, bias):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(block_size=32, vocab_size=70, n_layer=2, n_head=2, n_embd=32, bias=bias)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_hf(ours, str(tmp_path / "out"), eos_token_id=69)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "out"))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / "out")).eval()
    idx = torch.randint(70, (2, 32))
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max() <= 1e-4
    # and back: the round trip keeps every weight
    back = from_pretrained(str(tmp_path / "out"))
    for k, v in ours.state_dict().items():
        if k in back.state_dict():
            assert torch.equal(back.state_dict()[k], v), k


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    sig = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=1, n_embd=8, head="sigmoid"))
    with pytest.raises(ValueError, match="softmax"):
        export_hf(sig, str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a")
    for switch in ({"norm": "rmsnorm"}, {"mlp": "swiglu"}, {"pos": "rope"}):
        llama = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=1, n_embd=8, **switch))
        with pytest.raises(ValueError, match="GPT-2 has LayerNorm"):
            export_hf(llama, str(tmp_path / "a"))
        assert not os.path.exists(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    soft = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="not empty"):
        export_hf(soft, str(tmp_path / "b"))
    assert os.listdir(tmp_path / "b") == ["keep.txt"]


def test_fine_tune_from_a_hf_folder_and_export_from_the_command_line(data_dir, tmp_path):
    # a GPT-2-shaped model over the char data's 65 tokens stands in for OpenAI's (offline)
    hf = hf_gpt2(tmp_path / "hf", vocab_size=65)
    out = str(tmp_path / "ft")
    args = [a for a in TINY if not a.startswith(("--n_layer", "--n_head", "--n_embd"))]
    args += [f"--data_dir={data_dir}", "--n_layer=2", "--n_head=4", "--n_embd=32", "--max_iters=0"]
    train.main([*args, f"--out_dir={out}", f"--init_from={tmp_path / 'hf'}"])
    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)
    idx = torch.randint(65, (2, 32))
    model = checkpoint.build_model(ckpt, out).eval()
    with torch.no_grad():  # max_iters=0: the checkpoint holds exactly the imported weights
        assert (model(idx)[0] - hf(idx).logits).abs().max() <= 1e-4
    # a sigmoid head on top of the pretrained body trains
    train.main([*args, f"--out_dir={tmp_path / 'sig'}", f"--init_from={tmp_path / 'hf'}", "--head=sigmoid",
                "--max_iters=20", "--eval_interval=20", "--lr_decay_iters=20"])
    evals = [json.loads(line) for line in open(tmp_path / "sig" / "metrics.jsonl") if "val_loss" in line]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    # the shape must be stated in the config (it is what a resume is checked against)
    with pytest.raises(UserError, match="n_layer=2.*set the same in the config"):
        train.main([*args, "--n_layer=3", f"--out_dir={tmp_path / 'x'}", f"--init_from={tmp_path / 'hf'}"])
    with pytest.raises(UserError, match="training run's folder: pass"):  # ours, not a HuggingFace folder
        train.main([*args, f"--out_dir={tmp_path / 'y'}", f"--init_from={out}"])
    # command-line export of the fine-tuned checkpoint, loaded back by transformers
    r = run_script("checkpoint.py", "export", out, str(tmp_path / "exported"))
    assert r.returncode == 0, r.stderr
    again = GPT2LMHeadModel.from_pretrained(str(tmp_path / "exported")).eval()
    with torch.no_grad():
        assert (again(idx).logits - model(idx)[0]).abs().max() <= 1e-4
    r = run_script("checkpoint.py", "export", str(tmp_path / "sig"), str(tmp_path / "e2"))
    assert r.returncode == 2 and "softmax" in r.stderr and "Traceback" not in r.stderr


def test_sample_from_gpt2_offline_is_a_clear_error():
    env_run = dict(os.environ, HF_HUB_OFFLINE="1")
    import subprocess
    import sys
    from conftest import ROOT
    r = subprocess.run([sys.executable, "sample.py", "--init_from=gpt2-xl", "--max_new_tokens=1"], cwd=ROOT,
                       env=env_run, capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        pytest.skip("gpt2-xl is in this machine's HuggingFace cache")
    assert r.returncode == 2 and "could not load GPT-2 weights" in r.stderr and "Traceback" not in r.stderr


def test_tiktoken_gpt2_and_the_imported_vocabulary_agree():
    from tokenizer import TiktokenTokenizer
    try:
        tok = TiktokenTokenizer("gpt2")
    except OSError:
        pytest.skip("tiktoken's gpt2 vocabulary is not cached on this offline machine")
    assert tok.vocab_size == GPT2Config().vocab_size == 50257 and tok.eot_token == 50256
