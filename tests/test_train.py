import os

import pytest
import torch

import checkpoint
import train
from conftest import TINY, metrics as read_metrics, run_script, uninterrupted_and_resumed
from configurator import UserError


def test_loss_goes_down_and_outputs_are_written(data_dir, tmp_path):
    out = str(tmp_path / "out")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=150", "--lr_decay_iters=150",
                "--eval_interval=50", "--eval_iters=10", "--log_interval=10"])
    rows = read_metrics(out)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 50, 100, 150]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0  # from ~ln(65)=4.17 to well below
    steps = [r for r in rows if "loss" in r]
    assert {"iter", "loss", "lr", "ms_per_iter", "tokens_per_s", "mfu", "time_s"} <= set(steps[0])
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000

    ckpt = torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)  # no pickled code in there
    assert ckpt["iter_num"] == 150 and ckpt["tokenizer"]["kind"] == "char"
    assert ckpt["model_config"]["n_embd"] == 32 and ckpt["config"]["max_iters"] == 150
    assert not os.path.exists(os.path.join(out, "ckpt.pt.tmp"))


def test_resume_is_exact(data_dir, tmp_path):
    # dropout on, so the resumed run must also restore the RNG that draws dropout masks
    common = [*TINY, f"--data_dir={data_dir}", "--lr_decay_iters=40", "--eval_interval=10", "--log_interval=1",
              "--dropout=0.1"]
    ra, rb = uninterrupted_and_resumed(common, tmp_path, 40, 20)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]
    for x, y in zip(ra, rb):
        for k in ("loss", "lr", "train_loss", "val_loss"):
            assert x.get(k) == y.get(k), (x, y)
    sa = torch.load(os.path.join(a, "ckpt.pt"), weights_only=True)["model"]
    sb = torch.load(os.path.join(b, "ckpt.pt"), weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_refuses_another_architecture(data_dir, tmp_path):
    out = str(tmp_path / "out")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=2", "--eval_interval=2"])
    with pytest.raises(UserError, match="n_layer"):
        train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=4", "--n_layer=3",
                    "--init_from=resume"])


def test_lr_schedule():
    cfg = train.TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110)
    lrs = [train.get_lr(i, cfg) for i in range(150)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0  # warmup rises
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)  # cosine midpoint
    assert all(x >= y for x, y in zip(lrs[10:110], lrs[11:111])) and lrs[120] == 0.1


def test_missing_data_names_the_prepare_command(tmp_path):
    r = run_script("train.py", "--dataset=shakespeare_char", f"--data_dir={tmp_path}", "--device=cpu")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "python prepare_data.py shakespeare_char" in r.stderr


def test_bin_that_does_not_match_meta_is_refused(data_dir, tmp_path):
    import shutil
    bad = tmp_path / "shakespeare_char"
    shutil.copytree(os.path.join(data_dir, "shakespeare_char"), bad)
    with open(bad / "val.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(UserError, match="meta.json says"):
        train.main([*TINY, f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'o'}", "--max_iters=1"])


class _Payload:
    """Unpickling this would create a file: the classic code-running pickle."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoints_never_run_code_and_bad_files_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(marker)), "model_config": {}, "tokenizer": {}}, evil)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load_checkpoint(str(evil))
    assert not marker.exists()

    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "model_config": {}, "tokenizer": {}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load_checkpoint(str(truncated))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        checkpoint.load_checkpoint(str(other))
