"""
Tokenizers: text <-> lists of integer ids.

A language model never sees characters, only ids in [0, vocab_size). This file has the two simplest ways to
get them, behind one interface (`encode`, `decode`, `vocab_size`, `to_spec`):

- CharTokenizer: one id per distinct character of the training text. Tiny vocabulary (65 for Shakespeare),
  long sequences; perfect for learning and for CPU-sized models.
- TiktokenTokenizer: OpenAI's byte-level BPE vocabularies (gpt2, cl100k_base, o200k_base) through the
  `tiktoken` library: ~4 characters per token, the tokenizer real GPT-2 was trained with.

Every tokenizer can describe itself as a small JSON-able dict, its *spec*, and `from_spec` rebuilds the exact
same tokenizer from it. The spec travels inside `meta.json` and every checkpoint, so a checkpoint decodes its
own samples without the data folder it was trained on.

Special tokens (like `<|endoftext|>`) are strings that map to one reserved id each, numbered after the normal
vocabulary. As in tiktoken, text that happens to contain a special token's string is an error unless you say
what you mean: `allowed_special` (a set, or "all") encodes those strings as their special ids; passing
`disallowed_special=()` encodes them as ordinary text instead.
"""

import re

TIKTOKEN_NAMES = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")


def _special_pattern(tokens):
    # longest first, so that '<|a|><|ab|>'-style prefixes cannot shadow each other
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def _split_special(text, specials, allowed_special, disallowed_special):
    """Yield (piece, special_or_None): ordinary text pieces and the allowed special tokens between them."""
    allowed = set(specials) if allowed_special == "all" else set(allowed_special)
    if allowed - set(specials):
        raise ValueError(f"not special tokens of this tokenizer: {sorted(allowed - set(specials))}")
    disallowed = set(specials) - allowed if disallowed_special == "all" else set(disallowed_special)
    if disallowed:
        m = _special_pattern(disallowed).search(text)
        if m:
            raise ValueError(
                f"text contains the special token {m.group()!r} at position {m.start()}; pass "
                f"allowed_special={{{m.group()!r}}} to encode it as a special token, or "
                f"disallowed_special=() to encode it as ordinary text")
    if not allowed:
        yield text, None
        return
    start = 0
    for m in _special_pattern(allowed).finditer(text):
        yield text[start:m.start()], None
        yield m.group(), m.group()
        start = m.end()
    yield text[start:], None


class CharTokenizer:
    """One id per character: ids 0..len(chars)-1 in sorted character order, then the special tokens."""

    def __init__(self, chars, special_tokens=()):
        self.chars = "".join(chars)
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("CharTokenizer: duplicate characters in the vocabulary")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {t: len(self.chars) + i for i, t in enumerate(special_tokens)}
        self.itos = dict(enumerate(self.chars)) | {i: t for t, i in self.special_tokens.items()}
        self.vocab_size = len(self.itos)

    @classmethod
    def from_text(cls, text, special_tokens=()):
        return cls(sorted(set(text)), special_tokens)

    @property
    def eot_token(self):
        return self.special_tokens.get("<|endoftext|>")

    def encode(self, text, allowed_special=(), disallowed_special="all"):
        ids, offset = [], 0
        for piece, special in _split_special(text, self.special_tokens, allowed_special, disallowed_special):
            if special is not None:
                ids.append(self.special_tokens[special])
            else:
                for j, c in enumerate(piece):
                    i = self.stoi.get(c)
                    if i is None:
                        raise ValueError(f"character {c!r} at position {offset + j} is not in the "
                                         f"vocabulary of this char tokenizer ({len(self.chars)} characters)")
                    ids.append(i)
            offset += len(piece)
        return ids

    def decode(self, ids):
        try:
            return "".join(self.itos[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary (size {self.vocab_size})") from None

    def to_spec(self):
        return {"kind": "char", "chars": self.chars, "special_tokens": list(self.special_tokens)}


class TiktokenTokenizer:
    """A tiktoken encoding by name, optionally with extra special tokens appended after its vocabulary."""

    def __init__(self, name="gpt2", special_tokens=()):
        import tiktoken
        if name not in TIKTOKEN_NAMES:
            raise ValueError(f"unknown tiktoken encoding {name!r}; choose one of {', '.join(TIKTOKEN_NAMES)}")
        try:
            base = tiktoken.get_encoding(name)
        except Exception as e:  # requests' ConnectionError, urllib errors, ...: all mean "could not download"
            raise OSError(
                f"could not load the tiktoken vocabulary {name!r} ({type(e).__name__}); tiktoken downloads it "
                f"on first use, so this machine is probably offline. On a machine with internet run "
                f"`TIKTOKEN_CACHE_DIR=tiktoken_cache python -c \"import tiktoken; tiktoken.get_encoding('{name}')\"`"
                f", copy the tiktoken_cache folder here and set TIKTOKEN_CACHE_DIR to its path") from None
        self.name = name
        extra = [t for t in special_tokens if t not in base._special_tokens]
        specials = dict(base._special_tokens)
        for t in extra:
            specials[t] = base.n_vocab + len(specials) - len(base._special_tokens)
        self.extra_special = list(special_tokens)
        self.enc = base if not extra else tiktoken.Encoding(
            name=f"{name}+{len(extra)}", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
            special_tokens=specials)
        self.special_tokens = specials
        self.vocab_size = self.enc.n_vocab

    @property
    def eot_token(self):
        return self.special_tokens.get("<|endoftext|>")

    def encode(self, text, allowed_special=(), disallowed_special="all"):
        allowed = set(allowed_special) if allowed_special != "all" else "all"
        return self.enc.encode(text, allowed_special=allowed, disallowed_special=disallowed_special)

    def decode(self, ids):
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        return self.enc.decode(ids, errors="replace")

    def to_spec(self):
        return {"kind": "tiktoken", "name": self.name, "special_tokens": self.extra_special}


def from_spec(spec):
    """Rebuild a tokenizer from its spec (the dict stored in meta.json and checkpoints)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"not a tokenizer spec: {spec!r:.100}")
    kind, specials = spec["kind"], spec.get("special_tokens", [])
    if kind == "char":
        return CharTokenizer(spec["chars"], specials)
    if kind == "tiktoken":
        return TiktokenTokenizer(spec["name"], specials)
    raise ValueError(f"unknown tokenizer kind {kind!r} (known: char, tiktoken)")
