"""Faults a long run meets, each caused for real: kill -9 (also mid checkpoint write, and of prepare_data.py),
a loss that turns nan, a full disk or read-only folder, Ctrl-C/SIGTERM (also under torchrun). After each, the
last checkpoint loads and resuming from it gives exactly the losses of a run that was never interrupted.

One test hook, read from the environment and never set in normal use: NANOGPT_TEST_PAUSE=name makes the
process sleep at common.fault_point(name) (so a kill lands mid-write, deterministically). A nan loss is
monkeypatched in (nan_at), also under torchrun, through a two-line script that patches train.step."""
import errno
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import common as common_py  # common() below is this file's settings
import data
import metrics
import train
from conftest import ROOT, SHAKESPEARE, TINY, metrics as rows, uninterrupted_and_resumed
from configurator import UserError
from test_ddp import common as ddp_common, torchrun

MAX = 40  # the uninterrupted run's length, and where every interrupted one is resumed to


def common(data_dir):
    # dropout on: a resume must also restore the RNG of the dropout masks
    return [*TINY, f"--data_dir={data_dir}", f"--lr_decay_iters={MAX}", "--eval_interval=5", "--log_interval=1",
            "--dropout=0.1"]


def assert_same_run(ra, rb):
    """The same log lines with the same numbers, bit for bit."""
    assert [(r["iter"], "val_loss" in r) for r in ra] == [(r["iter"], "val_loss" in r) for r in rb]
    for x, y in zip(ra, rb):
        for k in ("loss", "lr", "train_loss", "val_loss"):
            assert x.get(k) == y.get(k), (x, y)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The metrics of the run that nothing interrupts."""
    out = str(tmp_path_factory.mktemp("reference"))
    train.main([*common(data_dir), f"--out_dir={out}", f"--max_iters={MAX}"])
    return rows(out)


def start(args, env=None, **kw):
    """train.py (or another script) as its own process, stderr captured: a run to kill."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, **kw)


def wait_for_iter(proc, out, n, timeout=120):
    """Block until metrics.jsonl logs iteration n (the process still running): a moment in mid-training."""
    path = os.path.join(out, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        if os.path.exists(path):
            done = [json.loads(line)["iter"] for line in open(path).read().splitlines()[:-1]]  # last may be torn
            if done and max(done) >= n:
                return
        time.sleep(0.005)
    raise TimeoutError(f"no iteration {n} in {timeout} s")


def wait_for_pause(proc, name):
    """Block until the process says it sleeps at fault_point(name)."""
    for line in proc.stderr:
        if line.strip() == f"paused at {name}":
            return
    raise AssertionError(f"{proc.args} ended without reaching {name} (exit {proc.wait()})")


def resume(data_dir, out, max_iters=MAX):
    train.main([*common(data_dir), f"--out_dir={out}", f"--max_iters={max_iters}", "--init_from=resume"])


# --- kill -9 ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("at", [3, 12, 21])
def test_kill_9_mid_training_loses_only_the_work_since_the_checkpoint(data_dir, tmp_path, reference, at):
    out = str(tmp_path / "out")
    p = start(["train.py", *common(data_dir), f"--out_dir={out}", "--max_iters=100000"])
    wait_for_iter(p, out, at)
    p.kill()  # SIGKILL: no handler runs, nothing is flushed
    p.wait()
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"))  # intact and loadable
    assert ckpt["iter_num"] % 5 == 0 and ckpt["iter_num"] <= at + 1
    resume(data_dir, out)
    assert_same_run(reference, rows(out))


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(data_dir, tmp_path, reference):
    out = str(tmp_path / "out")
    train.main([*common(data_dir), f"--out_dir={out}", "--max_iters=10"])
    before = open(os.path.join(out, "ckpt.pt"), "rb").read()
    p = start(["train.py", *common(data_dir), f"--out_dir={out}", "--max_iters=100000", "--init_from=resume"],
              {"NANOGPT_TEST_PAUSE": "checkpoint"})
    wait_for_pause(p, "checkpoint")  # iteration 15's checkpoint, written but not yet flushed nor renamed
    p.kill()
    p.wait()
    assert os.path.exists(os.path.join(out, "ckpt.pt.tmp"))  # the half-written one, never read
    assert open(os.path.join(out, "ckpt.pt"), "rb").read() == before
    resume(data_dir, out)
    assert_same_run(reference, rows(out))
    assert not os.path.exists(os.path.join(out, "ckpt.pt.tmp"))  # the next save replaced it


def test_a_torn_metrics_line_from_a_kill_is_dropped_on_resume(data_dir, tmp_path, reference):
    out = str(tmp_path / "out")
    train.main([*common(data_dir), f"--out_dir={out}", "--max_iters=10"])
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write('{"iter": 11, "loss": 3.9')  # what a kill in the middle of a write leaves
    resume(data_dir, out)
    assert_same_run(reference, rows(out))


# --- prepare_data.py killed ---------------------------------------------------------------------------------

def prepared(root):
    folder = os.path.join(root, "shakespeare_char")
    return {f: open(os.path.join(folder, f), "rb").read() for f in ("meta.json", "train.bin", "val.bin")}


@pytest.mark.parametrize("where", ["prepare_write", "prepare_rename"])
def test_kill_9_of_prepare_data_leaves_nothing_half_written(tmp_path, shakespeare_text, where):
    old = tmp_path / "old.txt"
    old.write_text(shakespeare_text[:200_000])
    args = ["prepare_data.py", "text", "--name", "shakespeare_char", "--out_root", str(tmp_path)]
    assert subprocess.run([sys.executable, *args, "--input", str(old)], cwd=ROOT).returncode == 0
    before = prepared(tmp_path)
    p = start([*args, "--input", SHAKESPEARE], {"NANOGPT_TEST_PAUSE": where})
    wait_for_pause(p, where)
    p.kill()
    p.wait()
    cfg = train.TrainConfig(dataset="shakespeare_char", data_dir=str(tmp_path), block_size=32)
    if where == "prepare_write":  # the previous data is untouched and still reads
        assert prepared(tmp_path) == before
        meta, splits = data.load_splits(cfg)[:2]
        assert meta["train_tokens"] == len(splits["train"]) < 200_000
    else:  # train.bin is new, val.bin old: without meta.json nothing reads the mix
        assert not os.path.exists(tmp_path / "shakespeare_char" / "meta.json")
        with pytest.raises(UserError, match="no prepared data .* run `python prepare_data.py"):
            data.load_splits(cfg)[:2]
    r = subprocess.run([sys.executable, *args, "--input", SHAKESPEARE], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "shakespeare_char")) == ["meta.json", "train.bin", "val.bin"]
    meta, splits = data.load_splits(cfg)[:2]
    assert meta["train_tokens"] + meta["val_tokens"] == len(shakespeare_text)


def test_a_full_disk_during_prepare_data_leaves_the_previous_files_and_no_temp_files(tmp_path, shakespeare_text,
                                                                                      monkeypatch):
    import prepare_data
    (tmp_path / "old.txt").write_text(shakespeare_text[:200_000])
    args = ["text", "--name", "shakespeare_char", "--out_root", str(tmp_path)]
    prepare_data.main([*args, "--input", str(tmp_path / "old.txt")])
    before = prepared(tmp_path)
    (tmp_path / "shakespeare_char" / "tokenizer.json.tmp").write_text("{")  # left by an earlier kill
    real = prepare_data.write_tokens

    def full(f, docs, encode, eot, dtype, name):  # train.bin written, val.bin runs out of space
        if name == "val.bin":
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, docs, encode, eot, dtype, name)
    monkeypatch.setattr(prepare_data, "write_tokens", full)
    with pytest.raises(UserError, match="cannot write to .*No space left on device"):
        prepare_data.main([*args, "--input", SHAKESPEARE])
    assert prepared(tmp_path) == before
    assert sorted(os.listdir(tmp_path / "shakespeare_char")) == ["meta.json", "train.bin", "val.bin"]


# --- nan -------------------------------------------------------------------------------------------------------

def nan_at(at, rank=None):
    """train.step, but at iteration `at` (on `rank` alone, if given) the loss is nan: as if training diverged."""
    step = train.step

    def poisoned(r, it, got_signal):
        if it != at or rank not in (None, r.rank):
            return step(r, it, got_signal)
        real = r.raw.head_loss
        r.raw.head_loss = lambda *a: real(*a) * float("nan")  # what forward calls, on this model only
        try:
            return step(r, it, got_signal)
        finally:
            del r.raw.head_loss
    return poisoned


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, reference, monkeypatch):
    out = str(tmp_path / "out")
    monkeypatch.setattr(train, "step", nan_at(12))
    with pytest.raises(UserError, match=r"not finite at iteration 12: .*ckpt.pt still holds iteration 10"):
        train.main([*common(data_dir), f"--out_dir={out}", f"--max_iters={MAX}"])
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["iter_num"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    monkeypatch.undo()
    resume(data_dir, out)  # the checkpoint is the uninterrupted run's at iteration 10
    assert_same_run(reference, rows(out))


def test_the_fp16_grad_scalers_skipped_steps_do_not_stop_training(data_dir, tmp_path, monkeypatch):
    # at a scale of 2^30 the scaled gradients overflow fp16: the GradScaler skips those steps and halves the
    # scale. That is its normal start (at 65536 on big models), not divergence: the loss is finite, training goes on
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 30))
    out = str(tmp_path / "out")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=30", "--eval_interval=30",
                "--dtype=float16"])
    scale = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"))["scaler"]["scale"]
    assert scale <= 2.0 ** 20  # at least 10 steps were skipped
    assert rows(out)[-1]["val_loss"] < rows(out)[0]["val_loss"]


def test_a_nan_on_one_process_stops_every_process_at_that_iteration(data_dir, tmp_path):
    out = str(tmp_path / "out")
    script = tmp_path / "train_nan.py"  # train.py with rank 1's loss nan at step 12; rank 0's own stays finite
    script.write_text(f"import sys\nsys.path[:0] = [{ROOT!r}, {os.path.dirname(__file__)!r}]\n"
                      "import train, test_faults\nfrom common import main_guard\n"
                      "train.step = test_faults.nan_at(12, rank=1)\nmain_guard(train.main)\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           *ddp_common(data_dir), f"--out_dir={out}", "--max_iters=30"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "error: the loss (or its gradient) is not finite at iteration 12 on some process" in r.stderr
    assert "Traceback" not in r.stderr.split("distributed/elastic")[0]  # after that: torchrun's own report
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["iter_num"] == 10 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert max(row["iter"] for row in rows(out)) == 11  # no process took step 12


# --- full disk, read-only folder -------------------------------------------------------------------------------

@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_a_failed_checkpoint_write_is_a_message_and_the_old_checkpoint_stays(data_dir, tmp_path, monkeypatch, err):
    out = str(tmp_path / "out")
    train.main([*common(data_dir), f"--out_dir={out}", "--max_iters=10"])
    before = open(os.path.join(out, "ckpt.pt"), "rb").read()
    real_save = torch.save

    def full_disk(obj, f):  # some bytes reach the file, then the disk is full (or turned read-only)
        f.write(b"PK\x03\x04 partial")
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=f"cannot write the checkpoint .*ckpt.pt \\({os.strerror(err)}\\); the "
                                        f"previous one, if any, is untouched"):
        resume(data_dir, out, max_iters=20)
    assert open(os.path.join(out, "ckpt.pt"), "rb").read() == before
    assert not os.path.exists(os.path.join(out, "ckpt.pt.tmp"))  # no temp file left behind
    monkeypatch.setattr(torch, "save", real_save)
    resume(data_dir, out, max_iters=20)  # space freed: it goes on from the old checkpoint


def test_a_read_only_out_dir_is_refused_before_training(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    train.main([*common(data_dir), f"--out_dir={out}", "--max_iters=5"])
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    out.chmod(0o555)
    try:
        (out / "probe").touch()  # root writes through a chmod: make writes fail the way a read-only mount does
        (out / "probe").unlink()
        real_open = open

        def read_only_open(path, mode="r", *a, **k):
            if str(path).startswith(str(out)) and any(c in mode for c in "wax+"):
                raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, mode, *a, **k)
        for module in (metrics, common_py):  # the files that open a run's files for writing, nobody else's
            monkeypatch.setattr(module, "open", read_only_open, raising=False)
    except PermissionError:
        pass  # not root: the chmod itself makes the folder read-only
    try:
        with pytest.raises(UserError, match=f"cannot write to {out}"):
            resume(data_dir, str(out), max_iters=10)
    finally:
        out.chmod(0o755)
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


# --- Ctrl-C and SIGTERM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_at_the_current_iteration_and_resume_is_exact(data_dir, tmp_path, reference, sig):
    out = str(tmp_path / "out")
    p = start(["train.py", *common(data_dir), f"--out_dir={out}", "--max_iters=100000"])
    wait_for_iter(p, out, 12)
    p.send_signal(sig)
    assert p.wait(timeout=60) == 128 + sig  # 130 for Ctrl-C, 143 for SIGTERM
    err = p.stderr.read()
    assert "Traceback" not in err
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"))
    last = max(r["iter"] for r in rows(out) if "loss" in r)
    assert ckpt["iter_num"] == last + 1 > 12  # the step under way finished, then saved: nothing lost
    resume(data_dir, out)
    assert_same_run(reference, rows(out))


def test_ctrl_c_under_torchrun_saves_once_and_every_process_stops(data_dir, tmp_path):
    full, out = str(tmp_path / "full"), str(tmp_path / "out")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *ddp_common(data_dir)]
    p = start(cmd[1:] + [f"--out_dir={out}", "--max_iters=100000"], start_new_session=True)
    wait_for_iter(p, out, 8)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group gets it
    p.wait(timeout=120)
    ckpt = checkpoint.load_checkpoint(os.path.join(out, "ckpt.pt"))
    last = max(r["iter"] for r in rows(out) if "loss" in r)
    assert ckpt["iter_num"] == last + 1 > 8 and len(ckpt["rng"]["torch"]) == 2
    assert not os.path.exists(os.path.join(out, "ckpt.pt.tmp"))
    stop = ckpt["iter_num"] + 3
    r = torchrun(*ddp_common(data_dir), f"--out_dir={out}", f"--max_iters={stop}", "--init_from=resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert torchrun(*ddp_common(data_dir), f"--out_dir={full}", f"--max_iters={stop}").returncode == 0
    ra, rb = rows(full), rows(out)
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]
    for x, y in zip(ra, rb):
        for k in ("loss", "train_loss", "val_loss"):
            assert (k in x) == (k in y), (x, y)
            if k in x:  # (newer pytest refuses approx(None) outright)
                assert x[k] == pytest.approx(y[k], rel=1e-6), (x, y)


def test_resume_is_exact_with_the_bayes_head(data_dir, tmp_path):
    # its evaluation draws weights: from a forked RNG, or the resumed run (which skips that evaluation) would
    # draw other dropout masks and loss samples than the uninterrupted one
    args = [*common(data_dir), "--head=bayes", "--lr_decay_iters=10"]
    assert_same_run(*uninterrupted_and_resumed(args, tmp_path, 10, 5))
