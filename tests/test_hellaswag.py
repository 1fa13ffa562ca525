"""hellaswag.py against independent references: its own plain rows, HuggingFace transformers on the exported
model, and lm-evaluation-harness's loglikelihood on the same folder; the data's checks, offline."""
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import urllib.error
from dataclasses import asdict

import pytest
import torch

import hellaswag
from checkpoint import export_hf, save_checkpoint
from conftest import ROOT, SHAKESPEARE, run_script
from configurator import UserError
from hellaswag import ending_log_probs, ending_log_probs_plain, read_examples
from model import GPT, GPTConfig
from tokenizer import BPETokenizer, CharTokenizer

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "hellaswag_tiny.jsonl")
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE with GPT-2's split pattern, as a GPT-2-tokenized model would have."""
    text = open(SHAKESPEARE, encoding="utf-8").read()[:300_000]
    return BPETokenizer.train(text, 400, pattern="gpt2", special_tokens=(EOT,), workers=1)


def small_gpt(vocab_size, block_size=64, seed=0, **kw):
    """A random model whose biases and norms are not at their init (so nothing cancels by accident)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def rand_example(V, ctx_len, end_lens, gen):
    ids = lambda n: torch.randint(V, (n,), generator=gen).tolist()  # noqa: E731
    return ids(ctx_len), [ids(n) for n in end_lens]


# ---- the fast path equals the plain rows ----

@pytest.mark.parametrize("kw", [{}, {"head": "sigmoid"}, {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu",
                                                          "bias": False}], ids=["softmax", "sigmoid", "llama"])
def test_the_cached_context_gives_the_plain_rows_scores(kw):
    model = small_gpt(50, block_size=32, **kw)
    gen = torch.Generator().manual_seed(0)
    # within the block (the cache path), single-token endings, one ending, and contexts that must be cut
    cases = [(5, [3, 1, 7, 2]), (1, [1, 1, 1, 1]), (12, [9]), (20, [10, 12, 3, 5]), (30, [4, 6]), (40, [32, 1])]
    for ctx_len, end_lens in cases:
        ctx, ends = rand_example(50, ctx_len, end_lens, gen)
        fast, plain = ending_log_probs(model, ctx, ends), ending_log_probs_plain(model, ctx, ends)
        assert fast.shape == (len(ends),) and torch.allclose(fast, plain, atol=1e-4, rtol=0), (ctx_len, end_lens)


def test_the_bayes_head_scores_through_its_own_log_probs():
    """With the posterior's std near 0 every weight draw is the mean weights, and the Bayesian head's scores are
    the softmax model's with the same weights, by both paths."""
    soft, bayes = small_gpt(50), small_gpt(50, head="bayes", bayes_init_std=1e-7)
    assert bayes.load_state_dict(soft.state_dict(), strict=False).missing_keys == ["lm_rho"]  # the same weights
    ctx, ends = rand_example(50, 9, [4, 6, 2, 5], torch.Generator().manual_seed(1))
    ref = ending_log_probs(soft, ctx, ends)
    assert torch.allclose(ending_log_probs(bayes, ctx, ends), ref, atol=1e-4)
    assert torch.allclose(ending_log_probs_plain(bayes, ctx, ends), ref, atol=1e-4)


# ---- against transformers on the exported model ----

def hf_ending_log_probs(hf, ctx, endings, block_size):
    """The plain computation with transformers' GPT2LMHeadModel: log_softmax of its logits, read at each ending
    token, one sequence at a time, cut to its last block_size + 1 tokens."""
    out = []
    for e in endings:
        row = (ctx + e)[-(block_size + 1):]
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([row[:-1]])).logits[0].double(), -1)
        out.append(sum(logp[len(row) - 1 - len(e) + i, t].item() for i, t in enumerate(e)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module")
def exported(bpe, tmp_path_factory):
    """A random softmax model with the BPE above: its checkpoint folder and its HuggingFace export."""
    root = tmp_path_factory.mktemp("hellaswag")
    model = small_gpt(bpe.vocab_size)
    save_checkpoint(str(root / "run" / "ckpt.pt"), {"model": model.state_dict(),
                                                   "model_config": asdict(model.config), "tokenizer": bpe.to_spec()})
    assert export_hf(model, str(root / "hf"), tok=bpe)
    return model, str(root / "run"), str(root / "hf")


def test_the_exported_tokenizer_is_ours(bpe, exported, tmp_path, shakespeare_text):
    from transformers import AutoTokenizer
    text = shakespeare_text[300_000:330_000] + " naïve café 🙂 — 42 dogs!\n\n  \tend " + EOT + " after"
    for tok, folder in [(bpe, exported[2]), (BPETokenizer.train(shakespeare_text[:100_000], 500, pattern="gpt4",
                                                                special_tokens=(EOT, "<mask>"), workers=1), None)]:
        if folder is None:
            folder = str(tmp_path / "gpt4")
            export_hf(small_gpt(tok.vocab_size), folder, tok=tok)
        hf_tok = AutoTokenizer.from_pretrained(folder)
        ids = tok.encode(text, allowed_special="all")
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
        assert hf_tok.decode(ids) == text
        assert hf_tok.convert_tokens_to_ids(EOT) == tok.eot_token == hf_tok.eos_token_id


def test_a_character_model_exports_without_a_tokenizer(tmp_path, shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    assert not export_hf(small_gpt(tok.vocab_size), str(tmp_path / "hf"), tok=tok)
    assert "tokenizer.json" not in os.listdir(tmp_path / "hf")


def test_scores_equal_transformers_on_the_exported_model(bpe, exported):
    from transformers import GPT2LMHeadModel
    model, _, folder = exported
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    for ctx, endings, _ in read_examples(FIXTURE):
        ctx_ids, end_ids = hellaswag.encode(bpe, ctx, endings, 0, 64)
        assert all(bpe.decode(e).startswith(" ") for e in end_ids)  # each ending with its leading space
        ours, ref = ending_log_probs(model, ctx_ids, end_ids), hf_ending_log_probs(hf, ctx_ids, end_ids, 64)
        assert torch.allclose(ours.double(), ref, atol=1e-3), (ours, ref)
    # a context longer than the model's 64 tokens: each row cut from the left, as transformers is fed here
    ctx_ids = bpe.encode("Then the king spoke, and all the lords of the court were silent, " * 6)
    end_ids = [bpe.encode(" and so it ended."), bpe.encode(" while the queen smiled at the fool and wept.")]
    assert len(ctx_ids) > 64
    ours, ref = ending_log_probs(model, ctx_ids, end_ids), hf_ending_log_probs(hf, ctx_ids, end_ids, 64)
    assert torch.allclose(ours.double(), ref, atol=1e-3)


def test_the_script_reports_what_transformers_computes(bpe, exported, tmp_path):
    from transformers import GPT2LMHeadModel
    _, run, folder = exported
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    examples = read_examples(FIXTURE)
    right = right_norm = 0
    for ctx, endings, label in examples:  # acc and acc_norm, by hand, from transformers' numbers
        ctx_ids, end_ids = bpe.encode(ctx), [bpe.encode(" " + e) for e in endings]
        total = hf_ending_log_probs(hf, ctx_ids, end_ids, 64)
        mean = total / torch.tensor([len(e) for e in end_ids])
        right += int(total.argmax()) == label
        right_norm += int(mean.argmax()) == label
    out = tmp_path / "r.json"
    p = run_script("hellaswag.py", f"--out_dir={run}", f"--data_file={FIXTURE}", "--device=cpu", f"--out={out}")
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert (r["n"], r["acc"], r["acc_norm"]) == (6, right / 6, right_norm / 6)
    assert f"6 examples: acc {right / 6:.4f}, acc_norm {right_norm / 6:.4f}" in p.stdout
    assert "softmax head" in p.stdout
    # the default place for the result, and --max_examples
    p = run_script("hellaswag.py", f"--out_dir={run}", f"--data_file={FIXTURE}", "--device=cpu",
                   "--max_examples", "2")
    assert p.returncode == 0, p.stderr
    assert json.loads(open(os.path.join(run, "hellaswag.json")).read())["n"] == 2


# ---- lm-evaluation-harness on the exported folder ----

def test_lm_eval_loglikelihood_equals_ours_and_transformers(bpe, exported, monkeypatch):
    pytest.importorskip("lm_eval")  # in requirements-dev.txt: CI always runs this
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import GPT2LMHeadModel
    model, _, folder = exported
    pairs = [(ctx, " " + e) for ctx, endings, _ in read_examples(FIXTURE)[:3] for e in endings[:2]]
    # longer than the model's 64 tokens, cut from the left by both (no trailing space: lm-eval would move it)
    long = ("Then the king spoke, and all the lords of the court were silent, " * 6).rstrip()
    pairs.append((long, " and so it ended."))
    lm = HFLM(pretrained=folder, device="cpu", batch_size=4)
    theirs = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])]
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    for (ctx, cont), ll in zip(pairs, theirs):
        ctx_ids, cont_ids = bpe.encode(ctx), bpe.encode(cont)
        ours = ending_log_probs(model, ctx_ids, [cont_ids]).item()
        ref = hf_ending_log_probs(hf, ctx_ids, [cont_ids], 64).item()
        assert math.isclose(ll, ours, abs_tol=1e-3) and math.isclose(ll, ref, abs_tol=1e-3), (ctx, cont, ll, ours)


TASK = """task: hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
validation_split: validation
process_docs: !function hellaswag_local.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_the_lm_eval_command_scores_the_exported_folder(bpe, exported, tmp_path):
    """`lm_eval --model hf --model_args pretrained=FOLDER` as a user runs it, offline: lm-eval's own hellaswag
    task pointed at a local file (docs/hellaswag.md), its acc and acc_norm against ours on lm-eval's query
    (its text cleaning, " " + ending, acc_norm per character of the ending)."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks.hellaswag.utils import preprocess
    model, _, folder = exported
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hellaswag_local.yaml").write_text(TASK.format(data=FIXTURE))
    (tmp_path / "tasks" / "hellaswag_local.py").write_text("from lm_eval.tasks.hellaswag.utils import process_docs\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    p = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={folder}",
                        "--tasks", "hellaswag_local", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
                        "--output_path", str(tmp_path / "results")], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    [path] = glob.glob(str(tmp_path / "results" / "**" / "results_*.json"), recursive=True)
    theirs = json.load(open(path))["results"]["hellaswag_local"]
    right = right_norm = 0
    rows = [json.loads(line) for line in open(FIXTURE)]
    for r in rows:
        query = preprocess(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
        choices = [preprocess(e) for e in r["endings"]]
        ll = ending_log_probs(model, bpe.encode(query), [bpe.encode(" " + c) for c in choices])
        right += int(ll.argmax()) == r["label"]
        right_norm += int((ll / torch.tensor([len(c) for c in choices])).argmax()) == r["label"]
    assert (theirs["acc,none"], theirs["acc_norm,none"]) == (right / len(rows), right_norm / len(rows))


# ---- the data and bad input ----

def test_examples_are_read_and_checked(tmp_path):
    ex = read_examples(FIXTURE)
    assert len(ex) == 6 and all(len(e) == 4 for _, e, _ in ex)
    assert ex[0] == ("A woman pours flour into a large bowl. she", json.loads(open(FIXTURE).readline())["endings"], 2)
    assert len(read_examples(FIXTURE, limit=2)) == 2
    good = {"ctx": "A man walks.", "endings": ["a", "b", "c", "d"], "label": "3"}  # HuggingFace's label
    assert read_examples(write(tmp_path / "ok.jsonl", [good]))[0][2] == 3
    bad = [("{not json", "not JSON"), ([1, 2], "JSON object"), ({**good, "ctx": ""}, "'ctx'"),
           ({k: v for k, v in good.items() if k != "endings"}, "'endings'"),
           ({**good, "endings": ["a", 3]}, "'endings'"),
           ({**good, "label": 4}, "'label'"), ({**good, "label": -1}, "'label'"), ({**good, "label": True}, "'label'"),
           ({**good, "label": 1.0}, "'label'")]
    for k, (row, what) in enumerate(bad):
        path = write(tmp_path / f"bad{k}.jsonl", [good, row])
        with pytest.raises(UserError, match=f"line 2.*{what}|line 2 is {what}"):
            read_examples(str(path))
    with pytest.raises(UserError, match="no examples"):
        read_examples(write(tmp_path / "empty.jsonl", []))
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps(good).encode() + b"\n\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_examples(str(tmp_path / "latin1.jsonl"))
    with pytest.raises(UserError, match="cannot read"):
        read_examples(str(tmp_path))  # a folder


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_the_data_is_downloaded_once_and_checked(tmp_path, monkeypatch):
    data = open(FIXTURE, "rb").read()
    monkeypatch.setattr(hellaswag, "SHA256", hashlib.sha256(data).hexdigest())  # the fixture plays the real file
    path = str(tmp_path / "cache" / "hellaswag_val.jsonl")

    def offline(url, timeout):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=f"offline.*put it at {path}"):
        hellaswag.fetch(path)
    assert not os.path.exists(path)

    class Response:
        def __init__(self, body):
            self.body = body

        def read(self, n):
            return self.body[:n]

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout: Response(data[:-10]))
    with pytest.raises(UserError, match="sha256 differs"):  # a truncated download is not written
        hellaswag.fetch(path)
    assert not os.path.exists(path)
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout: Response(data))
    assert hellaswag.fetch(path) == path and open(path, "rb").read() == data
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)  # the second time: no download
    assert hellaswag.fetch(path) == path
    with open(path, "ab") as f:
        f.write(b"\n")
    with pytest.raises(UserError, match="sha256 differs.*delete it"):
        hellaswag.fetch(path)


def test_models_that_cannot_score_it_are_refused(tmp_path, shakespeare_text, bpe):
    char = CharTokenizer.from_text(shakespeare_text)
    with pytest.raises(UserError, match="example 7: this model's tokenizer cannot encode"):
        hellaswag.encode(char, "A man walks 42 steps.", ["a", "b"], 7, 64)
    with pytest.raises(UserError, match="example 3: an ending of .* tokens does not fit .* 8"):
        hellaswag.encode(bpe, "A man walks.", ["a", "and then a very long ending that goes on and on"], 3, 8)
    mlm = small_gpt(bpe.vocab_size, causal=False)
    save_checkpoint(str(tmp_path / "mlm" / "ckpt.pt"), {"model": mlm.state_dict(), "model_config": asdict(mlm.config),
                                                       "tokenizer": bpe.to_spec()})
    p = run_script("hellaswag.py", f"--out_dir={tmp_path / 'mlm'}", f"--data_file={FIXTURE}", "--device=cpu")
    assert p.returncode == 2 and "masked language model" in p.stderr and "Traceback" not in p.stderr
    p = run_script("hellaswag.py", f"--out_dir={tmp_path / 'none'}", f"--data_file={FIXTURE}", "--max_examples=0")
    assert p.returncode == 2 and "max_examples" in p.stderr and "Traceback" not in p.stderr


def test_checkpoint_export_writes_the_tokenizer(exported, tmp_path):
    _, run, _ = exported
    p = run_script("checkpoint.py", "export", run, str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr
    assert "lm_eval --model hf" in p.stdout and "tokenizer.json" in os.listdir(tmp_path / "hf")
