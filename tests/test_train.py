import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import checkpoint
import train
from conftest import ROOT, TINY, metrics as read_metrics, run_script, uninterrupted_and_resumed
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


def test_log_lines_say_where_training_is_and_the_last_line_sums_up(data_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=20", "--eval_interval=10",
                "--log_interval=5"])
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if re.match(r"iter \d+/20: loss ", line)]
    assert [int(re.match(r"iter (\d+)", s).group(1)) for s in steps] == [0, 5, 10, 15]
    assert all(re.search(r", eta (\d+s|\d+m\d\ds)$", s) for s in steps)
    evals = [line for line in lines if re.match(r"iter \d+/20: train loss ", line)]
    assert len(evals) == 3
    best = min(r["val_loss"] for r in read_metrics(out) if "val_loss" in r)
    assert re.fullmatch(rf"done in \d+s: best val loss {best:.4f}, checkpoint in {re.escape(out)}/ckpt.pt", lines[-1])
    assert all(len(line) <= 100 for line in steps + evals)


def test_the_time_left_is_the_median_step_and_evaluation_times_what_is_to_come():
    from metrics import Meter, clock
    m = Meter(peak=None, flops_per_token=1.0)
    for seconds in (1.0, 2.0, 100.0):  # one slow step (an evaluation's neighbour, a hiccup) does not count much
        m.step(seconds, tokens=10)
    m.eval_times += [5.0, 7.0, 30.0]
    cfg = train.TrainConfig(max_iters=10, eval_interval=5)
    # after iteration 2: steps 3..9 at the median 2 s, and the evaluations at 5 and 10 at the median 7 s
    assert m.left(cfg, 2) == 7 * 2.0 + 2 * 7.0
    assert m.take(world=1)[:2] == pytest.approx((103.0 / 3 * 1000, 30 / 103.0))
    assert (clock(42.9), clock(185), clock(3725)) == ("42s", "3m05s", "1h02m")


def test_wandb_logs_what_metrics_jsonl_logs(data_dir, tmp_path):
    pytest.importorskip("wandb")
    out, wdir = tmp_path / "out", tmp_path / "wandb"
    wdir.mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(wdir), "WANDB_SILENT": "true"}
    r = subprocess.run([sys.executable, "train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={out}",
                        "--max_iters=10", "--eval_interval=5", "--log_interval=5", "--wandb_log=True",
                        "--wandb_run_name=tiny-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    runs = glob.glob(str(wdir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    raw = open(runs[0], "rb").read()  # wandb's record file: the logged keys and JSON values are stored as text
    rows = read_metrics(str(out))
    assert len(rows) == 5  # evaluations at 0, 5, 10; training records at 0, 5
    for row in rows:
        prefix = "eval/" if "val_loss" in row else ""
        for k, v in row.items():
            if k != "iter" and v is not None:
                # a whole float (a peak memory of 807.0 MB) may be stored as the int it equals
                text = [json.dumps(v)] + ([json.dumps(int(v))] if isinstance(v, float) and v.is_integer() else [])
                assert (prefix + k).encode() in raw and any(t.encode() in raw for t in text), (k, v)
    assert b"tiny-run" in raw and b"n_embd" in raw  # the run's name and its config


def test_wandb_missing_is_one_line(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    with pytest.raises(UserError, match="wandb_log=True needs the wandb package: pip install wandb"):
        train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", "--max_iters=1",
                    "--wandb_log=True"])
