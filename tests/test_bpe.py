"""The BPE tokenizer against independent references: a naive trainer written here, and tiktoken."""
import collections
import json
import os
import random

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenizer
from conftest import ROOT, SHAKESPEARE, run_script
from tokenizer import PATTERNS, BPETokenizer, from_spec

EOT = "<|endoftext|>"


def naive_train(text, vocab_size, pattern="gpt4", specials=()):
    """Chunk the text here, then train with tokenizer.learn_merges_plain, the textbook trainer (recount every pair
    after every merge), with the same vocab_size accounting as BPETokenizer.train."""
    for s in specials:
        text = text.replace(s, "\0")  # special-token strings are never trained on; \0 splits like they do
    rx = PATTERNS.get(pattern, pattern)
    chunks = collections.Counter(c for part in text.split("\0") for c in regex.findall(rx, part))
    return tokenizer.learn_merges_plain(chunks, vocab_size - len(specials))


def random_unicode(seed, n_words=3000):
    """Words over mixed scripts, emoji (4-byte UTF-8), combining marks, digits and odd whitespace."""
    rng = random.Random(seed)
    alphabet = ("abcdefghij" "ÄéßñøЖжЯяあいう漢字中文" "مرحبا" "שלום" "🙂🚀👍🏽" "\u0301\u0308"
                "0123456789" ".,!?'-" "\u00a0\u2003")
    lexicon = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    seps = [" ", " ", " ", "\n", "  ", "\n\n", "\t", ", ", "\r\n"]
    return "".join(rng.choice(lexicon) + rng.choice(seps) for _ in range(n_words))


@pytest.fixture(scope="module")
def shakespeare_bpe(shakespeare_text):
    return BPETokenizer.train(shakespeare_text, 4096, special_tokens=[EOT, "<mask>"])


@pytest.fixture(scope="module")
def unicode_bpe():
    return BPETokenizer.train(random_unicode(1), 1500, pattern="gpt2", special_tokens=[EOT])


# ---- training: the incremental trainer makes exactly the naive trainer's merges ----

def test_trainer_equals_naive_on_shakespeare(shakespeare_text):
    n = 256 + 300
    assert BPETokenizer.train(shakespeare_text, n, special_tokens=()).merges == naive_train(shakespeare_text, n)


@pytest.mark.parametrize("seed,pattern,vocab_size", [(0, "gpt4", 900), (1, "gpt2", 700), (2, r"\S+|\s+", 600)])
def test_trainer_equals_naive_on_random_unicode(seed, pattern, vocab_size):
    text = random_unicode(seed, 1500)
    got = BPETokenizer.train(text, vocab_size, pattern=pattern, special_tokens=[EOT])
    assert got.merges == naive_train(text, vocab_size, pattern, [EOT])
    assert got.vocab_size == vocab_size and got.special_tokens[EOT] == vocab_size - 1


def test_trainer_equals_naive_when_runs_repeat():
    # "aaaa", "abab": back-to-back and overlapping occurrences, where neighbour bookkeeping is easiest to get wrong
    text = "aaaa aaa aaaaa abab ababab aab bab abba " * 3 + "a " * 5
    got = BPETokenizer.train(text, 400, special_tokens=())
    assert got.merges == naive_train(text, 400)
    assert got.vocab_size < 400  # it ran out of pairs: the vocabulary is smaller than asked, not padded


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aab ", max_size=60), st.sampled_from(["gpt4", r"[\s\S]+"]))
def test_property_trainer_equals_naive_on_tiny_alphabets(text, pattern):
    # few letters and long runs: every overlap and back-to-back case turns up, and ties are everywhere
    assert BPETokenizer.train(text, 300, pattern, special_tokens=()).merges == naive_train(text, 300, pattern)


def test_tie_rule_smallest_pair_wins():
    # every pair occurs once: (32, 99) " c" < (97, 98) "ab" < (99, 100) "cd", so " c" is merged first
    tok = BPETokenizer.train("ab cd", 257, special_tokens=())
    assert tok.merges == [(32, 99)]


def test_training_from_an_iterable_equals_training_from_a_list(shakespeare_text):
    lines = shakespeare_text.splitlines(keepends=True)
    from_list = BPETokenizer.train(lines, 800)
    from_generator = BPETokenizer.train((line for line in lines), 800)
    assert from_generator.merges == from_list.merges


def test_parallel_counting_cuts_texts_without_changing_a_chunk(monkeypatch, shakespeare_text):
    text = shakespeare_text[:300_000] + random_unicode(3, 2000) + "end  \n  \nx"
    for name, pattern in PATTERNS.items():
        whole = collections.Counter(regex.findall(pattern, text))
        monkeypatch.setattr(tokenizer, "BATCH_CHARS", 5000)  # ~100 batches over two worker processes
        counted = tokenizer.count_chunks([text], pattern, [], workers=2, bar=_NoBar())
        assert counted == whole, name
        monkeypatch.undo()


class _NoBar:
    def update(self, n):
        pass


def test_special_token_strings_are_never_learned():
    tok = BPETokenizer.train(("hello world" + EOT) * 200, 400)
    assert not any(b"<|" in t or b"endof" in t for t in tok.vocab)
    assert tok.encode("hello" + EOT, allowed_special="all")[-1] == tok.eot_token == tok.vocab_size - 1


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="leaves no room"):
        BPETokenizer.train("abc", 256)  # 256 bytes + <|endoftext|> do not fit
    with pytest.raises(ValueError, match="distinct non-empty"):
        BPETokenizer.train("abc", 300, special_tokens=["<a>", "<a>"])
    with pytest.raises(regex.error):
        BPETokenizer.train("abc", 300, pattern="(unclosed")
    with pytest.raises(TypeError, match="str texts"):
        BPETokenizer.train([b"bytes"], 300)


# ---- encoding: exactly tiktoken's, on the same vocabulary ----

def test_encode_equals_tiktoken_on_shakespeare(shakespeare_bpe, shakespeare_text):
    enc = shakespeare_bpe.to_tiktoken()
    ids = shakespeare_bpe.encode(shakespeare_text)
    assert ids == enc.encode_ordinary(shakespeare_text)
    assert shakespeare_bpe.decode(ids) == shakespeare_text
    assert len(ids) < len(shakespeare_text) / 3  # it compresses: ~3.6 characters per token


def test_encode_equals_tiktoken_on_random_unicode_with_special_tokens(unicode_bpe):
    enc = unicode_bpe.to_tiktoken()
    text = random_unicode(7, 500)
    text = text[:900] + EOT + text[900:] + EOT
    assert unicode_bpe.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert unicode_bpe.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())
    assert unicode_bpe.encode(text, allowed_special="all").count(unicode_bpe.eot_token) == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.sampled_from([EOT, " ", "\n", "  \n", "'s", "🙂", "ab12"]))).map("".join))
def test_property_round_trip_and_tiktoken_agreement(unicode_bpe, s):
    ids = unicode_bpe.encode(s, allowed_special="all")
    assert unicode_bpe.decode(ids) == s
    assert ids == unicode_bpe.to_tiktoken().encode(s, allowed_special="all")
    plain = unicode_bpe.encode(s, disallowed_special=())
    assert plain == unicode_bpe.to_tiktoken().encode_ordinary(s) and unicode_bpe.decode(plain) == s


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_property_shakespeare_vocabulary(shakespeare_bpe, s):
    assert shakespeare_bpe.decode(shakespeare_bpe.encode(s)) == s
    assert shakespeare_bpe.encode(s) == shakespeare_bpe.to_tiktoken().encode(s)


def test_special_token_rules(shakespeare_bpe):
    with pytest.raises(ValueError, match="special token '<mask>'"):
        shakespeare_bpe.encode("to be <mask> not")
    ids = shakespeare_bpe.encode("to be <mask> not", allowed_special={"<mask>"})
    assert shakespeare_bpe.special_tokens["<mask>"] in ids
    assert shakespeare_bpe.decode(shakespeare_bpe.encode("<mask>", disallowed_special=())) == "<mask>"


def test_decode_replaces_broken_utf8_and_refuses_unknown_ids(shakespeare_bpe):
    first_byte_of_e_acute = "é".encode()[0]
    assert shakespeare_bpe.decode([first_byte_of_e_acute, ord("a")]) == "\ufffda"
    for bad in (4096, -1):
        with pytest.raises(ValueError, match=f"token id {bad} is outside"):
            shakespeare_bpe.decode([10, bad])


def test_merge_that_repeats_existing_bytes_reuses_the_id():
    # 'ab'+'c' and 'a'+'bc' both spell "abc": one token, so ids stay distinct byte strings as tiktoken needs
    tok = BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)], special_tokens=[EOT])
    assert len(tok.vocab) == 259 and tok.vocab_size == 260 and tok.ranks[b"abc"] == 257
    for s in ("abc", "xabcbcab", "bcbc abc"):
        assert tok.encode(s) == tok.to_tiktoken().encode(s)


# ---- saving, loading, specs ----

def test_save_load_and_spec_round_trip(tmp_path, shakespeare_bpe, shakespeare_text):
    path = tmp_path / "tok.json"
    shakespeare_bpe.save(path)
    again = BPETokenizer.load(path)
    assert again.merges == shakespeare_bpe.merges and again.special_tokens == shakespeare_bpe.special_tokens
    assert again.encode(shakespeare_text[:20000]) == shakespeare_bpe.encode(shakespeare_text[:20000])
    spec = json.loads(json.dumps(shakespeare_bpe.to_spec()))  # as it travels in meta.json and checkpoints
    rebuilt = from_spec(spec)
    assert rebuilt.vocab_size == 4096 and rebuilt.merges == shakespeare_bpe.merges
    assert json.loads(path.read_text())["merges"][0] == [32, 116, " t"]  # readable: one merge, its text


GOOD = {"format": "nanogpt-bpe", "version": 1, "pattern": "gpt4", "vocab_size": 259, "special_tokens": [EOT],
        "merges": [[104, 101, "he"], [256, 108, "hel"]]}


def corrupt_cases():
    def edit(**kw):
        return json.dumps({**GOOD, **kw})

    def drop(key):
        return json.dumps({k: v for k, v in GOOD.items() if k != key})

    return [
        ("not json", '{"format": "nanogpt-bpe", "merges": [[1, 2', "not valid JSON"),
        ("a list", "[1, 2, 3]", "not a BPE tokenizer file"),
        ("other format", edit(format="sentencepiece"), "not a BPE tokenizer file"),
        ("future version", edit(version=9), "unsupported version 9"),
        ("no merges", drop("merges"), "missing 'merges'"),
        ("no pattern", drop("pattern"), "missing 'pattern'"),
        ("merges not a list", edit(merges={"a": 1}), "merges must be a list"),
        ("merge too short", edit(merges=[[104]]), r"merge 0 is \[104\]"),
        ("merge not ints", edit(merges=[["h", "e"]]), "merge 0 is"),
        ("merge float ids", edit(merges=[[104.0, 101]]), "merge 0 is"),
        ("id from the future", edit(merges=[[104, 300, "?"]]), r"merge 0 \(104, 300\) uses an id"),
        ("negative id", edit(merges=[[-1, 101, "?"]]), "uses an id"),
        ("repeated merge", edit(merges=[[104, 101, "he"], [104, 101, "he"]]), "merge 1 .* repeats merge 0"),
        ("hand-edited text", edit(merges=[[104, 101, "hi"]]), "says its token is 'hi'"),
        ("vocab_size mismatch", edit(vocab_size=5000), "vocab_size says 5000"),
        ("bad regex", edit(pattern="(unclosed"), "not a valid regex"),
        ("pattern not str", edit(pattern=7), "pattern must be a string"),
        ("specials not list", edit(special_tokens="<|endoftext|>"), "special_tokens must be a list"),
        ("duplicate specials", edit(special_tokens=["<a>", "<a>"]), "distinct non-empty"),
        ("empty special", edit(special_tokens=[""]), "distinct non-empty"),
    ]


@pytest.mark.parametrize("name,content,message", corrupt_cases(), ids=[c[0] for c in corrupt_cases()])
def test_corrupt_files_are_refused_with_a_reason(tmp_path, name, content, message):
    path = tmp_path / "tok.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(path)


def test_good_file_in_corrupt_cases_loads(tmp_path):
    # the corrupt cases are edits of this file: it must itself be fine, or the cases above prove nothing
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(GOOD))
    tok = BPETokenizer.load(path)
    assert tok.vocab[257] == b"hel" and tok.eot_token == 258 and tok.encode("hello") == [257, 108, 111]


def test_not_utf8_and_bad_spec(tmp_path):
    path = tmp_path / "tok.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not UTF-8"):
        BPETokenizer.load(path)
    with pytest.raises(ValueError, match="missing 'merges'"):
        from_spec({"kind": "bpe", "pattern": "gpt4", "special_tokens": []})


# ---- the command line, and prepare_data.py ----

def test_cli_train_and_encode(tmp_path):
    out = tmp_path / "tok.json"
    r = run_script("tokenizer.py", "train", "--input", SHAKESPEARE, "--vocab_size", "1000", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "1000 tokens = 256 bytes + 743 merges + 1 special" in r.stdout
    r = run_script("tokenizer.py", "encode", "--tokenizer", str(out), "To be, or not")
    assert r.returncode == 0, r.stderr
    ids = BPETokenizer.load(out).encode("To be, or not")
    assert f"ids:    {ids}" in r.stdout and "' be'" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--input", "/no/such/file", "--vocab_size", "300", "--out", "x.json"], "does not exist"),
    (["train", "--input", SHAKESPEARE, "--vocab_size", "100", "--out", "x.json"], "leaves no room"),
    (["encode", "--tokenizer", "/no/such/tok.json", "hi"], "No such file"),
    (["encode", "--tokenizer", SHAKESPEARE, "hi"], "not valid JSON"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    r = run_script(os.path.join(ROOT, "tokenizer.py"), *args, cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "x.json")


def test_prepare_data_trains_bpe_on_the_train_split_only(tmp_path):
    import numpy as np
    # 90% of the characters say "ab", the last 10% say "xy": a tokenizer that saw val would merge x and y
    text = "ab ab abab\n" * 900 + "xy xy xyxy\n" * 100
    src = tmp_path / "corpus.txt"
    src.write_text(text)
    r = run_script("prepare_data.py", "text", "--input", str(src), "--name", "toy", "--tokenizer", "bpe",
                   "--vocab_size", "300", "--out_root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "toy" / "meta.json").read_text())
    tok = from_spec(meta["tokenizer"])
    assert meta["vocab_size"] == tok.vocab_size and (ord("x"), ord("y")) not in tok.merges
    assert BPETokenizer.load(tmp_path / "toy" / "tokenizer.json").merges == tok.merges
    train = np.fromfile(tmp_path / "toy" / "train.bin", dtype=meta["dtype"]).tolist()
    val = np.fromfile(tmp_path / "toy" / "val.bin", dtype=meta["dtype"]).tolist()
    # the cut falls inside the one document: train ends without <|endoftext|>, val (the document's end) with it
    assert tok.decode(train) == text[:9900] and tok.decode(val) == text[9900:] + EOT
    assert train == tok.encode(text[:9900])  # written with to_tiktoken(): the same ids


def test_prepare_data_bpe_needs_vocab_size(tmp_path):
    r = run_script("prepare_data.py", "shakespeare", "--input", SHAKESPEARE, "--tokenizer", "bpe",
                   "--out_root", str(tmp_path))
    assert r.returncode != 0 and "needs it" in r.stderr and "Traceback" not in r.stderr
