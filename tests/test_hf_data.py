"""prepare_data.py's HuggingFace path (openwebtext, hf), offline: `datasets` reading Parquet/JSON files written here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY
from tokenizer import BPETokenizer, from_spec

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402


def prepare(tmp_path, *args, **env):
    # HF_HOME in the temp folder: the datasets cache of the test, never the user's
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "prepare_data.py", *args, "--out_root", str(tmp_path / "data")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


def read_split(folder, split):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    ids = np.fromfile(os.path.join(folder, f"{split}.bin"), dtype=meta["dtype"])
    assert len(ids) == meta[f"{split}_tokens"]
    return meta, ids


def documents(ids, end):
    """Token ids cut after every end-of-document token."""
    docs, start = [], 0
    for i in np.flatnonzero(ids == end):
        docs.append(ids[start:i].tolist())
        start = i + 1
    assert start == len(ids), "the file must end with an end-of-document token"
    return docs


@pytest.fixture(scope="module")
def paragraphs(shakespeare_text):
    return [d for d in shakespeare_text.split("\n\n") if d.strip()]  # ~7,200 documents


def test_parquet_with_a_trained_bpe_and_two_processes(tmp_path, paragraphs):
    pq.write_table(pa.table({"text": paragraphs, "n": list(range(len(paragraphs)))}), tmp_path / "sh.parquet")
    args = ["hf", "--dataset", "parquet", "--data_files", str(tmp_path / "sh.parquet"), "--name", "shp",
            "--tokenizer", "bpe", "--vocab_size", "300", "--num_proc", "2", "--val_fraction", "0.05"]
    r = prepare(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "data" / "shp"
    meta, train = read_split(folder, "train")
    _, val = read_split(folder, "val")
    tok = from_spec(meta["tokenizer"])
    assert meta["val_documents"] == round(0.05 * len(paragraphs)) and meta["source"].startswith("hf:parquet")
    assert meta["train_documents"] + meta["val_documents"] == len(paragraphs)
    got = documents(train, tok.eot_token) + documents(val, tok.eot_token)
    # every document exactly once across the splits, each encoded as the tokenizer encodes it alone
    assert sorted(tok.decode(d) for d in got) == sorted(paragraphs)
    by_text = {p: i for i, p in enumerate(paragraphs)}
    for d in got[::50]:
        assert d == tok.encode(tok.decode(d)), "not the tokenizer's own encoding"
        assert tok.decode(d) in by_text
    # the tokenizer was trained on the training split only: training one here on those documents gives it
    train_docs = [tok.decode(d) for d in documents(train, tok.eot_token)]
    assert BPETokenizer.train(train_docs, 300).merges == tok.merges
    assert BPETokenizer.train(paragraphs, 300).merges != tok.merges  # (so the check above can tell)
    # a rerun gives the same files: the held-out documents are drawn with a fixed seed
    before = {f: (folder / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json")}
    assert prepare(tmp_path, *args).returncode == 0
    assert before == {f: (folder / f).read_bytes() for f in before}


def test_local_folder_with_its_own_validation_split_and_another_text_field(tmp_path, paragraphs, data_dir):
    src = tmp_path / "corpus"
    src.mkdir()
    for split, docs in (("train", paragraphs[:3000]), ("validation", paragraphs[3000:3400])):
        with open(src / f"{split}.jsonl", "w") as f:
            for d in docs:
                f.write(json.dumps({"body": d, "id": 1}) + "\n")
    r = prepare(tmp_path, "hf", "--dataset", str(src), "--val_split", "validation", "--text_field", "body",
                "--tokenizer", "char", "--name", "mine")
    assert r.returncode == 0, r.stderr[-3000:]
    meta, val = read_split(tmp_path / "data" / "mine", "val")
    tok = from_spec(meta["tokenizer"])
    # char has no end-of-text token: a newline ends each document; the validation split is the file's, in order
    assert tok.decode(val.tolist()) == "".join(d + "\n" for d in paragraphs[3000:3400])
    assert meta["train_documents"] == 3000
    # and train.py trains on it
    import train
    out = tmp_path / "out"
    train.main([*TINY, f"--data_dir={tmp_path / 'data'}", "--dataset=mine", f"--out_dir={out}", "--max_iters=2",
                "--eval_interval=2"])
    assert (out / "ckpt.pt").exists()


@pytest.mark.parametrize("args, message", [
    (["hf", "--dataset", "parquet", "--data_files", "PARQUET", "--name", "x", "--text_field", "body",
      "--tokenizer", "char"], "no column 'body'; its columns are text, n"),
    (["hf", "--dataset", "someone/not-a-cached-dataset", "--tokenizer", "char"], "HF_DATASETS_OFFLINE=1"),
    (["hf", "--dataset", "parquet", "--data_files", "PARQUET", "--tokenizer", "char"], "give --data_files and --name"),
    (["hf", "--tokenizer", "char"], "hf needs --dataset"),
    (["hf", "--dataset", "parquet", "--data_files", "nothing-here/*.parquet", "--name", "x", "--tokenizer", "char"],
     "could not load the dataset 'parquet'"),
    (["openwebtext", "--tokenizer", "char"], "HF_DATASETS_OFFLINE=1"),
])
def test_bad_input_is_a_clear_error(tmp_path, paragraphs, args, message):
    pq.write_table(pa.table({"text": paragraphs[:10], "n": list(range(10))}), tmp_path / "p.parquet")
    r = prepare(tmp_path, *[str(tmp_path / "p.parquet") if a == "PARQUET" else a for a in args])
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "data")
