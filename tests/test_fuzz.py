"""Damaged files and bad settings, generated: every mutated checkpoint, meta.json, tokenizer spec and setting
is refused in one line (UserError, which the scripts print as `error: ...` with exit code 2) or runs correctly,
never another exception; and a refusal leaves out_dir and data/ exactly as they were. Bounded example counts
(derandomized, so CI sees the same examples every run) keep this to about a minute."""
import copy
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import typing
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import evaluate
import prepare_data
import sample
import train
from conftest import SHAKESPEARE, TINY
from configurator import UserError
from tokenizer import BPETokenizer, CharTokenizer, from_spec

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# values a hand edit or a wrong file might leave in a field
junk = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 6), st.floats(allow_nan=True), st.text(max_size=8),
                 st.lists(st.integers(-2, 300), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                 st.builds(lambda n, dt: torch.zeros(n, dtype=dt), st.integers(0, 4),
                           st.sampled_from([torch.uint8, torch.float32, torch.int64])))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Prepared character data and a small trained run (4 steps, AdamW), read-only for the tests."""
    root = tmp_path_factory.mktemp("fuzz")
    text = open(SHAKESPEARE, encoding="utf-8").read()
    prepare_data.prepare("shakespeare_char", [text], CharTokenizer.from_text(text), SHAKESPEARE, str(root / "data"))
    args = [*TINY, f"--data_dir={root / 'data'}", "--eval_interval=2", "--log_interval=2", "--eval_iters=1"]
    quiet(train.main, [*args, f"--out_dir={root / 'run'}", "--max_iters=4"])
    return root, args, torch.load(root / "run" / "ckpt.pt", weights_only=True)


def quiet(fn, *a):
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        return fn(*a)


def fingerprint(folder):
    """Every file under folder with its bytes' hash: what a refusal must leave untouched."""
    return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(open(os.path.join(d, f), "rb").read()).digest()
            for d, _, files in os.walk(folder) for f in files}


def refused_or_ran(fn, *folders):
    """Run fn; a UserError (or a clean exit) must leave every folder as it was. Anything else fails the test."""
    before = [fingerprint(f) for f in folders]
    try:
        quiet(fn)
    except (UserError, SystemExit):
        assert [fingerprint(f) for f in folders] == before, "a refusal changed files"


def mutate(ckpt, data):
    """The checkpoint with one field deleted or replaced, at the top level or one level down."""
    ckpt = copy.copy(ckpt)
    key = data.draw(st.sampled_from(sorted(ckpt)))
    inner = ckpt[key]
    if isinstance(inner, dict) and inner and data.draw(st.booleans()):
        inner = ckpt[key] = copy.copy(inner)
        sub = data.draw(st.sampled_from(sorted(inner, key=str)))
        if key == "model" and data.draw(st.booleans()):  # a weight of another shape
            inner[sub] = torch.zeros(*data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
        elif data.draw(st.booleans()):
            del inner[sub]
        else:
            inner[sub] = data.draw(junk)
    elif data.draw(st.booleans()):
        del ckpt[key]
    else:
        ckpt[key] = data.draw(junk)
    return ckpt


@settings(FUZZ, max_examples=120)
@given(data=st.data(), use=st.sampled_from(["resume", "sample", "evaluate", "finetune"]))
def test_a_damaged_checkpoint_is_refused_or_works(world, data, use):
    root, args, good = world
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        shutil.copytree(root / "run", run)
        torch.save(mutate(good, data), os.path.join(run, "ckpt.pt"))
        uses = {"resume": lambda: train.main([*args, f"--out_dir={run}", "--init_from=resume", "--max_iters=6"]),
                "sample": lambda: sample.main([f"--out_dir={run}", "--max_new_tokens=3", "--num_samples=1",
                                               "--device=cpu"]),
                "evaluate": lambda: evaluate.main([f"--out_dir={run}", "--max_tokens=128", "--shift=False",
                                                   f"--data_dir={root / 'data'}", "--device=cpu"]),
                "finetune": lambda: train.main([*args, f"--out_dir={tmp}/ft", f"--init_from={run}/ckpt.pt",
                                                "--max_iters=2"])}
        refused_or_ran(uses[use], run, root / "data")


@FUZZ
@given(data=st.data())
def test_a_damaged_meta_json_is_refused_or_works(world, data):
    root, args, _ = world
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(root / "data", os.path.join(tmp, "data"))
        path = os.path.join(tmp, "data", "shakespeare_char", "meta.json")
        meta = json.load(open(path))
        key = data.draw(st.sampled_from(sorted(meta)))
        if data.draw(st.booleans()):
            del meta[key]
        else:
            meta[key] = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-3, 2 ** 40), st.floats(),
                                            st.text(max_size=8), st.lists(st.integers(), max_size=2),
                                            st.dictionaries(st.sampled_from(["kind", "chars", "special_tokens"]),
                                                            st.one_of(st.text(max_size=4), st.lists(st.integers())))))
        with open(path, "w") as f:
            json.dump(meta, f)
        out = os.path.join(tmp, "out")
        refused_or_ran(lambda: train.main([*args, f"--data_dir={tmp}/data", f"--out_dir={out}", "--max_iters=2"]),
                       os.path.join(tmp, "data"))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(spec=st.fixed_dictionaries({"kind": st.sampled_from(["char", "bpe", "tiktoken", "other"])}, optional={
    "chars": st.one_of(st.text(max_size=6), st.integers(), st.lists(st.text(max_size=2))),
    "special_tokens": st.one_of(st.lists(st.one_of(st.text(max_size=5), st.integers(), st.lists(st.text()))),
                                st.text(max_size=3), st.none()),
    "pattern": st.one_of(st.sampled_from(["gpt2", "gpt4", "(", "[a"]), st.integers()),
    "merges": st.one_of(st.lists(st.lists(st.integers(-1, 300), max_size=3), max_size=4), st.text(max_size=3)),
    "name": st.one_of(st.sampled_from(["nope", 3])),
}))
def test_a_damaged_tokenizer_spec_raises_only_what_callers_catch(spec):
    """Every caller of from_spec turns ValueError, TypeError and OSError into a one-line refusal; nothing else
    may come out (a list of non-strings as special tokens was a TypeError from inside a set)."""
    try:
        from_spec(spec)
    except (ValueError, OSError):
        pass


@settings(max_examples=60, deadline=None, derandomize=True)
@given(specials=st.lists(st.one_of(st.text(max_size=4), st.integers(), st.none(), st.lists(st.text(max_size=2))),
                         max_size=3), merges=st.lists(st.lists(st.one_of(st.integers(-1, 300), st.text(max_size=2)),
                                                               max_size=3), max_size=3))
def test_a_damaged_tokenizer_file_is_refused(tmp_path_factory, specials, merges):
    path = tmp_path_factory.mktemp("tok") / "tok.json"
    path.write_text(json.dumps({"format": "nanogpt-bpe", "version": 1, "pattern": "gpt2",
                                "special_tokens": specials, "merges": merges}))
    try:
        BPETokenizer.load(str(path))
    except ValueError:
        pass


NUMERIC = [f.name for f in dataclasses.fields(train.TrainConfig)
           if typing.get_type_hints(train.TrainConfig)[f.name] in (int, float) and f.name != "max_iters"]


@settings(FUZZ, max_examples=150)
@given(key=st.sampled_from(NUMERIC), value=st.one_of(st.integers(-3, 3), st.floats(-3, 3), st.sampled_from(
    ["float('nan')", "float('inf')", "-1e9", "2.5"])))
def test_a_numeric_setting_is_refused_or_works(world, key, value):
    root, args, _ = world
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "c.py")  # a config file: the one way to give nan or inf
        with open(config, "w") as f:
            f.write(f"{key} = {value}\n")
        refused_or_ran(lambda: train.main([*args, config, f"--out_dir={tmp}/out", "--max_iters=2"]),
                       root / "data")  # the file after TINY's settings, so its value wins
