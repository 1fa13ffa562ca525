"""optimizer='muon': torch.optim.Muon for the blocks' weight matrices, AdamW for the rest, as one optimizer."""
import os

import pytest
import torch

import checkpoint
import train
from configurator import UserError
from conftest import TINY, metrics as rows, uninterrupted_and_resumed
from model import GPT, GPTConfig
from test_ddp import assert_same_run, common, torchrun

MUON = ["--optimizer=muon", "--muon_lr=0.01"]


@pytest.mark.parametrize("arch", [dict(head="bayes"), dict(head="sigmoid", bias=False),
                                  dict(norm="rmsnorm", mlp="swiglu", pos="rope")])
def test_every_parameter_goes_to_exactly_one_optimizer(arch):
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16, **arch))
    opt = train.make_optimizer(m, train.TrainConfig(optimizer="muon"), "cpu")
    adamw, muon = opt
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in m.named_parameters()}
    got = {o: [names[id(p)] for g in o.param_groups for p in g["params"]] for o in (adamw, muon)}
    everything = got[adamw] + got[muon]
    assert sorted(everything) == sorted(names.values()) and len(set(everything)) == len(everything)
    # written out by name: the matrices inside the blocks, and nothing else
    want = sorted(n for n, p in m.named_parameters() if n.startswith("transformer.h.") and n.endswith("weight")
                  and p.dim() == 2)
    assert sorted(got[muon]) == want and len(want) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert "lm_head.weight" in got[adamw] or "transformer.wte.weight" in got[adamw]  # tied: one tensor
    # its learning rate follows the schedule, in proportion muon_lr / learning_rate
    cfg = train.TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.02, warmup_iters=10)
    opt = train.make_optimizer(m, cfg, "cpu")
    train.set_lr(opt, train.get_lr(3, cfg))
    assert opt[0].param_groups[0]["lr"] == train.get_lr(3, cfg)
    assert opt[1].param_groups[0]["lr"] == pytest.approx(train.get_lr(3, cfg) * 20)


def test_adamw_alone_is_unchanged():
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    assert [type(o) for o in train.make_optimizer(m, train.TrainConfig(), "cpu")] == [torch.optim.AdamW]


def test_muon_trains_and_resumes_bit_for_bit(data_dir, tmp_path):
    args = [*TINY, f"--data_dir={data_dir}", *MUON, "--dropout=0.1", "--eval_interval=10", "--log_interval=1",
            "--lr_decay_iters=20"]
    ra, rb = uninterrupted_and_resumed(args, tmp_path, 20, 10)
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]
    assert [r.get("loss") for r in ra] == [r.get("loss") for r in rb]  # bit for bit on CPU
    assert [r.get("val_loss") for r in ra] == [r.get("val_loss") for r in rb]
    evals = [r["val_loss"] for r in ra if "val_loss" in r]
    assert evals[-1] < evals[0] - 0.5  # it learns


def test_two_processes_equal_one_with_muon(data_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train.main([*common(data_dir), *MUON, f"--out_dir={one}", "--max_iters=20"])
    r = torchrun(*common(data_dir), *MUON, f"--out_dir={two}", "--max_iters=20")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(rows(one), rows(two), rtol=1e-3)  # Newton-Schulz runs in bf16: sums in another order show more


def test_an_adamw_checkpoint_is_not_resumed_with_muon_but_fine_tuned_from(data_dir, tmp_path):
    out = str(tmp_path / "adamw")
    base = [*TINY, f"--data_dir={data_dir}", "--eval_interval=5"]
    train.main([*base, f"--out_dir={out}", "--max_iters=5"])
    with pytest.raises(UserError, match="trained with optimizer='adamw', this config says 'muon'.*--init_from="):
        train.main([*base, *MUON, f"--out_dir={out}", "--max_iters=10", "--init_from=resume"])
    assert [r["iter"] for r in rows(out)][-1] == 5  # nothing written
    new = str(tmp_path / "muon")
    train.main([*base, *MUON, f"--out_dir={new}", "--max_iters=5", f"--init_from={out}/ckpt.pt"])
    assert os.path.isfile(os.path.join(new, "ckpt.pt"))


def test_bad_optimizer_settings_are_refused(data_dir, tmp_path):
    for bad, message in (("--optimizer=sgd", "unknown optimizer 'sgd'"), ("--muon_lr=0", "muon_lr > 0")):
        with pytest.raises(UserError, match=message):
            train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path}", bad])


def test_a_resumed_run_takes_this_runs_muon_lr(data_dir, tmp_path):
    out = str(tmp_path / "run")
    base = [*TINY, f"--data_dir={data_dir}", *MUON, "--eval_interval=5"]
    train.main([*base, f"--out_dir={out}", "--max_iters=5"])
    cfg = train.TrainConfig(optimizer="muon", muon_lr=0.05)
    m = GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32))
    opt = train.make_optimizer(m, cfg, "cpu")
    checkpoint.load_optimizer(opt, torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)["optimizer"])
    assert opt[1].param_groups[0]["lr_scale"] == pytest.approx(0.05 / cfg.learning_rate)
    assert len(opt[1].state) == 8  # the saved momentum buffers, one per matrix
