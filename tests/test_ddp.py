"""torchrun on CPU (gloo): two processes must train exactly what one process does with the same global batch."""
import os
import sys

import pytest
import torch

import train
from conftest import ROOT, TINY, metrics as rows, run_script


GLOO_EXIT_ABORT = "terminate called without an active exception"


def torchrun(*args, nproc=2):
    """train.py under torchrun. A rare abort of one process inside gloo's C++ after the run had finished (3
    times in 2 full suite runs on 2 cores, never in 18 runs of these tests alone; not yet understood) is
    retried once, from the out_dir as it was before, with a warning; any other failure, and a second abort,
    fail the test as they are."""
    import shutil
    import subprocess
    import warnings
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "train.py", *args]
    out = ([a.split("=", 1)[1] for a in args if a.startswith("--out_dir=")] or [None])[-1]
    before = out and os.path.isdir(out) and shutil.copytree(out, out + ".before")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode and GLOO_EXIT_ABORT in r.stderr:
        warnings.warn(f"torchrun: gloo aborted ({GLOO_EXIT_ABORT}); retrying once. Its last output: "
                      f"{r.stdout[-300:]!r}")
        if out:
            shutil.rmtree(out, ignore_errors=True)
        if before:
            shutil.copytree(out + ".before", out)
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if before:
        shutil.rmtree(out + ".before")
    return r


def common(data_dir):
    return [a for a in TINY if not a.startswith("--gradient_accumulation_steps")] + [
        f"--data_dir={data_dir}", "--gradient_accumulation_steps=4", "--batch_size=4", "--lr_decay_iters=30",
        "--eval_interval=10", "--log_interval=1"]


def assert_same_run(ra, rb, rtol):
    assert [(r["iter"], "val_loss" in r) for r in ra] == [(r["iter"], "val_loss" in r) for r in rb]
    for x, y in zip(ra, rb):
        for k in ("loss", "train_loss", "val_loss"):
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=rtol), (k, x, y)


def test_two_processes_equal_one_with_the_same_global_batch(data_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train.main([*common(data_dir), f"--out_dir={one}", "--max_iters=30"])
    r = torchrun(*common(data_dir), f"--out_dir={two}", "--max_iters=30")
    assert r.returncode == 0, r.stderr[-3000:]
    # rank 0 alone prints and writes: one config dump, one metrics line per iteration, one checkpoint
    assert r.stdout.count("tokens per iteration") == 1 and "2 processes x 2 micro-steps" in r.stdout
    assert sorted(os.listdir(two)) == ["ckpt.pt", "curves.png", "metrics.jsonl"]
    # float sums in another order (two half-batches averaged by all-reduce) is the only difference
    assert_same_run(rows(one), rows(two), rtol=1e-4)
    a = torch.load(os.path.join(one, "ckpt.pt"), weights_only=True)
    b = torch.load(os.path.join(two, "ckpt.pt"), weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-3, atol=1e-4)
    assert len(b["rng"]["torch"]) == 2  # every rank's dropout RNG is saved


def test_resume_under_torchrun_and_by_one_process(data_dir, tmp_path):
    full, part, solo = str(tmp_path / "full"), str(tmp_path / "part"), str(tmp_path / "solo")
    assert torchrun(*common(data_dir), f"--out_dir={full}", "--max_iters=20").returncode == 0
    r = torchrun(*common(data_dir), f"--out_dir={part}", "--max_iters=10")
    assert r.returncode == 0, r.stderr[-3000:]
    os.system(f"cp -r {part} {solo}")
    r = torchrun(*common(data_dir), f"--out_dir={part}", "--max_iters=20", "--init_from=resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout
    assert_same_run(rows(full), rows(part), rtol=1e-6)
    # the batch stream does not depend on the number of processes: one process continues the same run
    train.main([*common(data_dir), f"--out_dir={solo}", "--max_iters=20", "--init_from=resume"])
    assert_same_run(rows(full), rows(solo), rtol=1e-4)


def test_accumulation_must_divide_between_processes(data_dir, tmp_path):
    args = [a for a in common(data_dir) if not a.startswith("--gradient_accumulation_steps")]
    r = torchrun(*args, "--gradient_accumulation_steps=3", f"--out_dir={tmp_path / 'x'}", "--max_iters=2")
    assert r.returncode != 0
    assert "must be a multiple of the number of processes (2)" in r.stderr
    # the processes' own output ends in a message; the launcher's report after it is torchrun's
    assert "Traceback" not in r.stderr.split("distributed/elastic")[0]
    assert not os.path.exists(tmp_path / "x")


def test_single_process_unchanged_by_ddp_code(data_dir, tmp_path):
    # without torchrun's variables nothing distributed is set up
    r = run_script("train.py", *common(data_dir), f"--out_dir={tmp_path / 'o'}", "--max_iters=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "processes x" not in r.stdout
