"""The scripts end to end, run as a user runs them: prepare -> train -> sample, bench, and their errors."""
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

import prepare_data
from conftest import ROOT, SHAKESPEARE, TINY, run_script
from configurator import UserError
from tokenizer import from_spec


def test_prepare_shakespeare_char(tmp_path, shakespeare_text):
    r = run_script("prepare_data.py", "shakespeare_char", "--input", SHAKESPEARE, "--out_root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "shakespeare_char"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vocab_size"] == 65 and meta["dtype"] == "uint16"
    n = len(shakespeare_text)
    assert (meta["train_tokens"], meta["val_tokens"]) == (int(0.9 * n), n - int(0.9 * n))
    tok = from_spec(meta["tokenizer"])
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert tok.decode(val) == shakespeare_text[int(0.9 * n):]  # the standard last 10%
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "val.bin"]  # no temp files left
    for split in ("train", "val"):  # recorded while writing, so readers need not scan the files
        assert meta[f"{split}_max_id"] == np.fromfile(folder / f"{split}.bin", dtype=np.uint16).max()
    assert meta["train_max_id"] == 64  # 'z', the last of the 65 characters


def test_prepare_hf_records_the_largest_ids(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["abc", "zzz~", "ba", "cab"] * 5))
    r = run_script("prepare_data.py", "hf", "--dataset", "json", "--data_files", str(docs), "--name", "j",
                   "--tokenizer", "char", "--val_fraction", "0.25", "--out_root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "j" / "meta.json").read_text())
    for split in ("train", "val"):
        ids = np.fromfile(tmp_path / "j" / f"{split}.bin", dtype=np.uint16)
        assert len(ids) == meta[f"{split}_tokens"] and meta[f"{split}_max_id"] == ids.max()
    assert meta["train_max_id"] == meta["vocab_size"] - 1  # '~', the largest character, is in train


def test_prepare_text_folder_and_offline_download(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first document " * 50)
    (docs / "b.txt").write_text("second one " * 50)
    prepare_data.main(["text", "--input", str(docs), "--name", "mine", "--out_root", str(tmp_path / "d")])
    meta = json.loads((tmp_path / "d" / "mine" / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == 750 + 550 + 1  # the two joined by a newline

    def offline(*a, **k):
        raise OSError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match="--input"):
        prepare_data.main(["text", "--input", "https://example.com/a.txt", "--name", "web",
                           "--out_root", str(tmp_path / "d")])
    # Tiny Shakespeare needs no network: the bundled copy, the standard 90/10 split
    prepare_data.main(["shakespeare_char", "--out_root", str(tmp_path / "d")])
    meta = json.loads((tmp_path / "d" / "shakespeare_char" / "meta.json").read_text())
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1003854, 111540)


def test_bundled_shakespeare_is_checked(tmp_path, monkeypatch):
    bad = tmp_path / "tinyshakespeare.txt"
    bad.write_text(open(SHAKESPEARE).read().replace("\n", "\r\n"))  # as a line-ending conversion would leave it
    monkeypatch.setattr(prepare_data, "SHAKESPEARE", str(bad))
    with pytest.raises(UserError, match="sha256"):
        prepare_data.main(["shakespeare_char", "--out_root", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()


def test_train_then_sample(data_dir, tmp_path):
    out = str(tmp_path / "out")
    r = run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--max_iters=30",
                   "--eval_interval=30")
    assert r.returncode == 0, r.stderr
    r = run_script("sample.py", f"--out_dir={out}", "--max_new_tokens=60", "--num_samples=2", "--top_p", "0.9",
                   "--start", "ROMEO:", "--device=cpu")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("---------------")
    assert len(samples) == 2 and all(s.strip().startswith("ROMEO:") for s in samples)
    assert len(samples[0].strip()) >= 60 and "tokens/s" in r.stderr

    # the same seed gives the same text, with the compiled decode step too
    again = run_script("sample.py", f"--out_dir={out}", "--max_new_tokens=60", "--num_samples=2", "--top_p",
                       "0.9", "--start", "ROMEO:", "--device=cpu", "--compile")
    assert again.returncode == 0, again.stderr
    assert again.stdout == r.stdout and "the compile included" in again.stderr

    # piped into a reader that stops early (`python sample.py | head`): exit 1, no traceback
    p = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={out}", "--max_new_tokens=20000", "--device=cpu"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.read(10)
    p.stdout.close()
    assert p.wait(timeout=120) == 1 and "Traceback" not in p.stderr.read()

    r = run_script("sample.py", f"--out_dir={out}", "--top_p", "1.5")
    assert r.returncode == 2 and "top_p must be in (0, 1]" in r.stderr and "Traceback" not in r.stderr
    r = run_script("sample.py", f"--out_dir={out}", "--start", "ROMEO: ☃")
    assert r.returncode == 2 and "'☃' at position 7" in r.stderr
    r = run_script("sample.py", f"--out_dir={tmp_path / 'nothing'}")
    assert r.returncode == 2 and "no checkpoint" in r.stderr


SMALL = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
         "--gradient_accumulation_steps=1", "--bench_iters=2", "--repeats=1", "--device=cpu"]


def test_bench_json():
    r = run_script("bench.py", *SMALL, "--vocab_size=65", "--sample_tokens=40", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["train"]["tokens_per_s"] > 0 and 0 < res["train"]["mfu"] < 1 and res["train"]["peak_mem_mb"] > 0
    assert [(row["batch"], row["new_tokens"]) for row in res["sample"]] == [(1, 40), (1, 31), (8, 40), (8, 31)]
    assert all(row["same_tokens"] and row["compiled_tok_s"] > 0 for row in res["sample"])


def test_bench_takes_the_vocabulary_of_the_configs_data(data_dir, tmp_path):
    # the model it times has the data's 65 outputs (params: 2 layers of 12,288 + 65 * 32 + ...), not a default
    r = run_script("bench.py", *SMALL, "--what=train", f"--data_dir={data_dir}", "--dataset=shakespeare_char", "--json")
    assert r.returncode == 0, r.stderr
    ours = json.loads(r.stdout)["train"]["params_M"]
    r = run_script("bench.py", *SMALL, "--what=train", "--vocab_size=50257", "--json")
    assert json.loads(r.stdout)["train"]["params_M"] - ours == pytest.approx((50257 - 65) * 32 / 1e6)
    r = run_script("bench.py", *SMALL, f"--data_dir={tmp_path}", "--dataset=openwebtext")
    assert r.returncode == 2 and "--vocab_size" in r.stderr and "Traceback" not in r.stderr


def test_bench_grid_times_every_head_eager_and_compiled():
    r = run_script("bench.py", *SMALL, "--what=grid", "--vocab_size=65", "--sample_tokens=20", "--warmup=1")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [tuple(c.strip() for c in row.split("|")[1:3]) for row in rows] == [
        (h, c) for c in ("no", "yes") for h in ("softmax", "sigmoid", "bayes")]
    assert "KV cache   compiled" in r.stdout


def test_bench_hellaswag_times_both_ways():
    r = run_script("bench.py", *SMALL, "--what=hellaswag", "--vocab_size=65", "--hs_context=10", "--hs_ending=4",
                   "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["hellaswag"]
    assert res["cached_ms"] > 0 and res["plain_ms"] > 0 and res["speedup"] == res["plain_ms"] / res["cached_ms"]
    assert res["full_set_min"] == pytest.approx(res["cached_ms"] * 10042 / 60000)
    r = run_script("bench.py", *SMALL, "--what=hellaswag", "--vocab_size=65", "--hs_ending=1")
    assert r.returncode == 2 and "hs_ending" in r.stderr


def test_bench_heads_json_with_the_formulas():
    r = run_script("bench.py", "--what=heads", "--vocab_size=300", "--n_layer=1", "--n_head=2", "--n_embd=16",
                   "--block_size=16", "--batch_size=2", "--bench_iters=1", "--warmup=1", "--repeats=1", "--formulas",
                   "--device=cpu", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["head"] for row in rows] == ["softmax", "sigmoid", "bayes", "sigmoid-formula", "bayes-formula"]
    assert rows[0]["time_ratio"] == 1.0 and all(row["ms"] > 0 for row in rows)


def test_bench_tokenizer_json():
    # small sizes: this checks that the benchmark runs and reports, not how fast anything is
    r = run_script("bench.py", "--what=tokenizer", f"--text_file={SHAKESPEARE}", "--corpus_mb=1",
                   "--big_vocab=600", "--repeats=1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert [row["vocab_size"] for row in out["training"]] == [4096, 600]
    assert all(row["ours_s"] > 0 and row["ours_peak_mb"] > 0 for row in out["training"])
    assert out["corpus_bytes"] <= 1_000_000 and len(out["corpus_sha256"]) == 64
    assert out["encoding"]["python_warm_mb_s"] > 0 and out["encoding"]["tiktoken_mb_s"] > 0
