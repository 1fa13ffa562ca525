import pytest
import tiktoken

import tokenizer
from tokenizer import CharTokenizer, TiktokenTokenizer, from_spec


def test_char_round_trip_and_vocab(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    assert tok.vocab_size == len(set(shakespeare_text)) == 65
    ids = tok.encode(shakespeare_text[:5000])
    assert tok.decode(ids) == shakespeare_text[:5000]
    chars = sorted(set(shakespeare_text))  # once: recounting 1M characters per id took 45 s
    assert ids == [chars.index(c) for c in shakespeare_text[:5000]]


def test_char_unknown_character_names_it_and_its_position():
    tok = CharTokenizer.from_text("hello world")
    with pytest.raises(ValueError, match=r"'Z' at position 6"):
        tok.encode("hello Zorld")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 99])


def test_char_spec_round_trip_with_special_tokens(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text, special_tokens=["<|endoftext|>", "<mask>"])
    again = from_spec(tok.to_spec())
    text = "ROMEO:<|endoftext|>JULIET<mask>"
    assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert again.vocab_size == 67 and again.eot_token == 65 and again.special_tokens["<mask>"] == 66
    assert again.decode(again.encode(text, allowed_special="all")) == text


def test_special_tokens_follow_tiktoken_rules():
    tok = CharTokenizer.from_text("<|endoftext|>ab", special_tokens=["<|endoftext|>"])
    with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>' at position 1"):
        tok.encode("a<|endoftext|>b")
    assert tok.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"})[1] == tok.eot_token
    plain = tok.encode("a<|endoftext|>b", disallowed_special=())
    assert len(plain) == 15 and tok.eot_token not in plain


def test_spec_errors():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        from_spec({"kind": "nope"})
    with pytest.raises(ValueError, match="not a tokenizer spec"):
        from_spec(["char"])


def test_tiktoken_offline_error_says_what_to_do(monkeypatch):
    def offline(name):
        raise ConnectionError("Failed to resolve host")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(OSError, match="TIKTOKEN_CACHE_DIR"):
        TiktokenTokenizer("gpt2")
    with pytest.raises(ValueError, match="unknown tiktoken encoding"):
        TiktokenTokenizer("gpt5")


def test_tiktoken_wrapper_against_tiktoken(monkeypatch):
    # a small byte-level encoding built here stands in for the downloaded one (tests never need the network)
    ranks = {bytes([i]): i for i in range(256)} | {b"th": 256, b"he": 257, b"the": 258}
    local = tiktoken.Encoding(name="gpt2", pat_str=r"""\s?\w+|\s?[^\w\s]+|\s+""", mergeable_ranks=ranks,
                              special_tokens={"<|endoftext|>": 259})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: local)
    tok = TiktokenTokenizer("gpt2", special_tokens=["<mask>"])
    assert tok.vocab_size == 261 and tok.special_tokens["<mask>"] == 260 and tok.eot_token == 259
    text = "the other thesis héllo<|endoftext|>"
    assert tok.encode(text, allowed_special="all") == local.encode(text, allowed_special="all")
    assert tok.encode("a<mask>", allowed_special={"<mask>"})[-1] == 260
    again = tokenizer.from_spec(tok.to_spec())
    assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert again.decode([104, 195]) == "h\ufffd"  # a cut multi-byte character is replaced, not raised
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([261])
