"""Bad input, however wrong: a one-line `error: ...` that says what to do, exit code 2, no traceback, and every
file on disk as it was. Cases already covered elsewhere are not repeated here: unknown keys, wrong types,
missing and raising config files (test_config.py), top_p and an unknown prompt character (test_cli.py), a
missing data folder, a .bin that does not match meta.json, truncated/foreign/code-running checkpoints
in-process and another n_layer on resume (test_train.py), accumulation steps that do not divide between
processes (test_ddp.py), corrupt and incomplete BPE files (test_bpe.py)."""
import hashlib
import json
import os
import shutil
import urllib.request

import numpy as np
import pytest
import torch

import data
import prepare_data
import sample
import train
from conftest import TINY, run_script
from configurator import UserError


def snapshot(folder):
    """Every file under folder with a hash of its bytes: 'nothing changed on disk' is an equality of these."""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def assert_refused(r, message):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, r.stderr[-2000:]


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """A tiny trained run (out/ckpt.pt) and a copy of its data, in one folder the tests may corrupt copies of."""
    root = tmp_path_factory.mktemp("run")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={root / 'out'}", "--max_iters=2", "--eval_interval=2"])
    return root


@pytest.fixture
def work(run, data_dir, tmp_path):
    """A fresh copy of the run and its data for one test: tmp/out/ckpt.pt, tmp/data/shakespeare_char/."""
    shutil.copytree(run / "out", tmp_path / "out")
    shutil.copytree(os.path.join(data_dir, "shakespeare_char"), tmp_path / "data" / "shakespeare_char")
    return tmp_path


def corrupt_ids(work, split, at=500, every=None):
    """Write id 70 (the vocabulary has 65 characters) at position `at`, and every `every` tokens after it: meta.json
    still records the largest id as 64, so only the batches that read a bad id can find it."""
    path = work / "data" / "shakespeare_char" / f"{split}.bin"
    a = np.memmap(path, dtype=np.uint16, mode="r+")
    a[at::every or len(a)] = 70
    a.flush()


# --- on the command line: exit code 2, one line, nothing changed -------------------------------------------

def cases():
    bad_cfg = "import os\nbatch_size = int(os.environ['NO_SUCH_VARIABLE'])\n"
    return [
        # configs
        ("config file that raises", ["train.py", "BADCFG", *TINY], "config file", bad_cfg),
        ("block_size beyond the checkpoint's", ["train.py", *TINY, "--data_dir=DATA", "--out_dir=OUT",
                                                 "--init_from=resume", "--block_size=64"],
         "cannot resume: the checkpoint has block_size=32 but this config says 64", None),
        ("top_k < 1", ["sample.py", "--out_dir=OUT", "--top_k=0"], "top_k must be at least 1", None),
        ("temperature < 0", ["sample.py", "--out_dir=OUT", "--temperature=-0.5"], "temperature must be >= 0", None),
        ("max_new_tokens < 0", ["sample.py", "--out_dir=OUT", "--max_new_tokens=-1"], "max_new_tokens must be >= 0",
         None),
        # data
        ("ids beyond the vocabulary, training", ["train.py", *TINY, "--data_dir=DATA", "--out_dir=OUT",
                                                 "--max_iters=1"],  # every window of the first batch meets one
         "train.bin holds token id 70 at position ", "IDS:train:16"),
        ("ids beyond the vocabulary, evaluating", ["evaluate.py", "--out_dir=OUT", "--data_dir=DATA", "--device=cpu"],
         "val.bin holds token id 70 at position 500", "IDS:val"),
        # checkpoints
        ("truncated checkpoint", ["sample.py", "--out_dir=OUT"], "is not a readable checkpoint: truncated", "TRUNCATE"),
        ("code-running pickle", ["sample.py", "--out_dir=OUT"], "could run code; refused", "EVIL"),
        ("beta1 out of range", ["train.py", *TINY, "--data_dir=DATA", "--out_dir=OUT", "--beta1=3.5"],
         "beta1 must be in [0, 1), got 3.5", None),
        ("an optimizer state of another shape", ["train.py", *TINY, "--data_dir=DATA", "--out_dir=OUT",
                                                 "--init_from=resume", "--max_iters=4"],
         "ckpt.pt cannot be resumed: its optimizer does not fit this run (ValueError: a state 'exp_avg' of shape",
         "OPTSHAPE"),
        ("no RNG states", ["train.py", *TINY, "--data_dir=DATA", "--out_dir=OUT", "--init_from=resume",
                           "--max_iters=4"], "ckpt.pt cannot be resumed: rng must be a dict, got 'NoneType'", "NORNG"),
        ("a model setting of the wrong type", ["sample.py", "--out_dir=OUT"],
         "ckpt.pt: model_config['n_layer'] must be of type int, got '2'", "NLAYERSTR"),
        ("meta.json's dtype not a string", ["train.py", *TINY, "--data_dir=DATA", "--out_dir=OUT"],
         "meta.json: 'dtype' must be 'uint16' or 'uint32', got 2", "METADTYPE"),
        # tokenizers
        ("special tokens that are not strings", ["tokenizer.py", "encode", "--tokenizer", "BADTOK", "hello"],
         "special_tokens must be a list of strings", "BADTOK"),
        ("special token in text", ["tokenizer.py", "encode", "--tokenizer", "BPE", "end<|endoftext|>"],
         "contains the special token '<|endoftext|>' at position 3: add --allow_special", None),
    ]


@pytest.mark.parametrize("name,args,message,setup", cases(), ids=[c[0] for c in cases()])
def test_the_command_line_refuses_with_one_line(work, name, args, message, setup):
    if setup == "TRUNCATE":
        ckpt = work / "out" / "ckpt.pt"
        ckpt.write_bytes(ckpt.read_bytes()[:3000])
    elif setup == "EVIL":
        torch.save({"model": _Payload(str(work / "pwned")), "model_config": {}, "tokenizer": {}},
                   work / "out" / "ckpt.pt")
    elif setup in ("OPTSHAPE", "NORNG", "NLAYERSTR"):
        ckpt = torch.load(work / "out" / "ckpt.pt", weights_only=True)
        if setup == "OPTSHAPE":
            state = next(iter(ckpt["optimizer"]["state"].values()))
            state["exp_avg"] = torch.zeros(3, 3)
        elif setup == "NORNG":
            del ckpt["rng"]
        else:
            ckpt["model_config"]["n_layer"] = "2"
        torch.save(ckpt, work / "out" / "ckpt.pt")
    elif setup == "METADTYPE":
        path = work / "data" / "shakespeare_char" / "meta.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"dtype": 2}))
    elif setup == "BADTOK":
        (work / "bad_tok.json").write_text(json.dumps({"format": "nanogpt-bpe", "version": 1, "pattern": "gpt2",
                                                       "special_tokens": [["<x>"]], "merges": []}))
    elif setup and setup.startswith("IDS:"):
        split, _, every = setup[4:].partition(":")
        corrupt_ids(work, split, every=int(every) if every else None)
    elif setup:
        (work / "bad_config.py").write_text(setup)
    if "BPE" in args:
        from tokenizer import BPETokenizer
        BPETokenizer.train(["hello world " * 20], 270).save(work / "tok.json")
    subs = {"OUT": str(work / "out"), "DATA": str(work / "data"), "BADCFG": str(work / "bad_config.py"),
            "BPE": str(work / "tok.json"), "BADTOK": str(work / "bad_tok.json")}
    args = [subs.get(a, a).replace("=OUT", f"={work / 'out'}").replace("=DATA", f"={work / 'data'}") for a in args]
    before = snapshot(work)
    assert_refused(run_script(*args), message)
    assert snapshot(work) == before
    assert not (work / "pwned").exists()


class _Payload:
    """Unpickling this would create a file: a checkpoint that runs code."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_empty_and_tiny_input_text(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    r = run_script("prepare_data.py", "text", "--input", str(tmp_path / "empty.txt"), "--name", "e",
                   "--out_root", str(tmp_path / "d"))
    assert_refused(r, "the input text is empty")
    assert not os.path.exists(tmp_path / "d" / "e" / "meta.json")
    # smaller than one block: prepared (it is valid text), then refused by train.py, which knows block_size
    (tmp_path / "tiny.txt").write_text("To be, or not to be, that is the question.")
    prepare_data.main(["text", "--input", str(tmp_path / "tiny.txt"), "--name", "tiny",
                       "--out_root", str(tmp_path / "d")])
    with pytest.raises(UserError, match=r"val.bin has 5 tokens, fewer than block_size\+1 \(33\): use more text"):
        train.main([*TINY, "--dataset=tiny", f"--data_dir={tmp_path / 'd'}", f"--out_dir={tmp_path / 'o'}"])
    assert not os.path.exists(tmp_path / "o")


# --- in-process: the same refusals, faster -------------------------------------------------------------------

def test_resuming_with_another_head_is_refused(work):
    with pytest.raises(UserError, match="cannot resume: the checkpoint has head='softmax' but this config says "
                                        "'bayes'"):
        train.main([*TINY, f"--data_dir={work / 'data'}", f"--out_dir={work / 'out'}", "--init_from=resume",
                    "--head=bayes"])


def test_a_corrupt_meta_json_is_refused(work):
    (work / "data" / "shakespeare_char" / "meta.json").write_text('{"vocab_size": 65, "dtype": "uint1')
    with pytest.raises(UserError, match="cannot read .*meta.json .*Unterminated.*rerun prepare_data.py"):
        train.main([*TINY, f"--data_dir={work / 'data'}", f"--out_dir={work / 'o'}"])


def test_a_checkpoint_whose_tokenizer_is_broken(work):
    # a hand-edited or foreign checkpoint: a BPE spec without its merges
    path = work / "out" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["tokenizer"] = {"kind": "bpe", "pattern": "gpt4", "special_tokens": []}
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="tokenizer of .* is not usable \\(missing 'merges'\\)"):
        sample.main([f"--out_dir={work / 'out'}", "--device=cpu", "--max_new_tokens=1"])


def test_special_tokens_in_a_fill_text_are_refused(data_dir, tmp_path):
    out = str(tmp_path / "mlm")
    train.main([*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", "--objective=mlm", "--max_iters=1",
                "--eval_interval=1"])
    with pytest.raises(UserError, match="cannot encode the --fill text: .*<pad>"):
        sample.main([f"--out_dir={out}", "--fill", "ab<mask>c<pad>", "--device=cpu"])


def test_downloads_are_https_only_and_size_checked(monkeypatch):
    with pytest.raises(UserError, match="only https:// URLs"):
        prepare_data.download("http://example.com/input.txt")

    class Big:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def read(self, n):
            return b"x" * n  # as much as asked for: more than the limit
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Big())
    monkeypatch.setattr(prepare_data, "MAX_DOWNLOAD", 1000)
    with pytest.raises(UserError, match="larger than 1,000 bytes"):
        prepare_data.download("https://example.com/input.txt")


def test_a_batch_that_reads_a_bad_id_names_its_position(work):
    corrupt_ids(work, "train")  # at 500 only; meta.json still says the largest id is 64
    for batching in ("packed", "lines"):
        d = data.load(data.DataConfig(dataset="shakespeare_char", data_dir=str(work / "data"), block_size=32,
                                      batching=batching))
        rows = [468, 480] if batching == "packed" else np.flatnonzero(  # windows, or the piece holding 500
            (d.pieces["train"][:, 0] <= 500) & (500 < d.pieces["train"].sum(1)))
        data.get_batch(d, "train", [0, 1000], "cpu")  # batches that miss it are fine
        with pytest.raises(UserError, match=r"train.bin holds token id 70 at position 500, but meta.json's "
                                            r"vocab_size is 65"):
            data.get_batch(d, "train", list(rows), "cpu")
