"""
Tokenizers: text <-> lists of integer ids.

A language model never sees characters, only ids in [0, vocab_size). This file has three ways to get them,
behind one interface (`encode`, `decode`, `vocab_size`, `to_spec`):

- CharTokenizer: one id per distinct character of the training text. Tiny vocabulary (65 for Shakespeare),
  long sequences; perfect for learning and for CPU-sized models.
- BPETokenizer: byte-level byte-pair encoding trained here, from scratch, on your own text, the way GPT-2's and
  GPT-4's tokenizers were made. Its trainer keeps pair counts up to date incrementally, so it trains a
  4,096-token vocabulary on Tiny Shakespeare in well under a second of pure Python (read `learn_merges`,
  beside its plain reference `learn_merges_plain`).
- TiktokenTokenizer: OpenAI's byte-level BPE vocabularies (gpt2, cl100k_base, o200k_base) through the
  `tiktoken` library: ~4 characters per token, the tokenizer real GPT-2 was trained with.

Every tokenizer can describe itself as a small JSON-able dict, its *spec*, and `from_spec` rebuilds the exact
same tokenizer from it. The spec travels inside `meta.json` and every checkpoint, so a checkpoint decodes its
own samples without the data folder it was trained on.

Special tokens (like `<|endoftext|>`) are strings that map to one reserved id each, numbered after the normal
vocabulary. As in tiktoken, text that happens to contain a special token's string is an error unless you say
what you mean: `allowed_special` (a set, or "all") encodes those strings as their special ids; passing
`disallowed_special=()` encodes them as ordinary text instead.

As a command, for learning what BPE does:

    python tokenizer.py train --input input.txt --vocab_size 4096 --out tok.json
    python tokenizer.py encode --tokenizer tok.json "To be, or not to be"
"""

import argparse
import collections
import concurrent.futures
import heapq
import itertools
import json
import os
import re
from dataclasses import dataclass, field

import regex  # like `re`, plus the Unicode classes (\p{L} letters, \p{N} numbers) that the split patterns use

from common import UserError, atomic_write, main_guard

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


# ---------------------------------------------------------------------------------------------------------------
# Byte-level BPE, trained here
#
# Text -> UTF-8 bytes -> ids 0..255, then "merges": each merge names an adjacent pair of ids and the new id that
# replaces it. Training picks merges greedily: the pair that occurs most often in the training text becomes the
# next token. Two ideas make it practical:
# 1. A regex first splits text into chunks (words with their leading space, runs of digits, punctuation,
#    whitespace), and merges never cross a chunk boundary, so " dog" and " dog." share their tokens.
# 2. Chunks repeat: Tiny Shakespeare's 263,198 chunks are only 15,258 distinct ones. The trainer works on the
#    distinct chunks ("words"), each weighted by how often it occurs.

# The published split patterns: GPT-2's (r50k) and GPT-4's (cl100k), as tiktoken writes them.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
            r"""\s*[\r\n]|\s+(?!\S)|\s""",
}
# Where a long text may be cut for counting without changing its chunks: right after a newline that sits between
# two non-space characters. Both built-in patterns always end a chunk there (no alternative matches a newline
# followed by a non-space, and a lone newline is a chunk of its own whether or not text follows it).
_SAFE_CUT = regex.compile(r"\S\n(?=\S)")
BATCH_CHARS = 1 << 21  # characters per chunk-counting task
FORMAT = "nanogpt-bpe"


def _utf8(s):
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (only from broken input): U+FFFD instead, as tiktoken does
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def _count_chunks(pattern, texts, counts=None):
    """Occurrences of each chunk in a list of texts. Runs in a worker process when the input is large."""
    counts = collections.Counter() if counts is None else counts
    rx = regex.compile(pattern)
    for t in texts:
        counts.update(rx.findall(t))
    return counts


def cut_text(text, size):
    """`text` in pieces of about `size` characters (or more), cut only at safe places (see _SAFE_CUT): for the
    built-in patterns, encoding the pieces one by one gives exactly the ids of encoding the whole text."""
    i = 0
    while i < len(text):
        m = _SAFE_CUT.search(text, i + size) if len(text) - i > size else None
        j = m.end() if m else len(text)
        yield text[i:j]
        i = j


def _batches(texts, specials, cuttable):
    """Lists of texts of about BATCH_CHARS characters, reading `texts` lazily (an iterable may be a corpus that
    does not fit in memory). Special-token strings are cut out: they are encoded as their own ids, so no learned
    token should contain them. Long texts are cut at safe places (for the built-in patterns only)."""
    batch, size = [], 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"BPE training needs str texts, got {type(text).__name__}")
        for piece, special in _split_special(text, specials, "all", ()):
            if special is not None:
                continue
            for part in cut_text(piece, BATCH_CHARS) if cuttable else (piece,):
                batch.append(part)
                size += len(part)
                if size >= BATCH_CHARS:
                    yield batch
                    batch, size = [], 0
    if batch:
        yield batch


def count_chunks(texts, pattern, specials, workers, bar):
    """Chunk -> count over all texts; with workers > 1 and more than one batch of text, in worker processes
    (counting is independent per batch, and splitting is most of the time on a large corpus)."""
    batches = _batches(texts, specials, cuttable=pattern in PATTERNS.values())
    head = list(itertools.islice(batches, 2))
    counts = collections.Counter()
    if workers <= 1 or len(head) < 2:  # a small input is not worth starting processes for
        for batch in itertools.chain(head, batches):
            _count_chunks(pattern, batch, counts)
            bar.update(sum(map(len, batch)))
        return counts
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        pending = collections.deque()

        def collect():
            fut, n = pending.popleft()
            counts.update(fut.result())
            bar.update(n)

        for batch in itertools.chain(head, batches):
            pending.append((pool.submit(_count_chunks, pattern, batch), sum(map(len, batch))))
            while len(pending) > 2 * workers:  # bounded: never more than a few batches in memory
                collect()
        while pending:
            collect()
    return counts


def learn_merges_plain(chunk_counts, n_tokens):
    """The textbook trainer, the reference for learn_merges below (same merges: tests/test_bpe.py): recount every
    pair of every word after every merge. Slow (a pass over all words per merge), and plain to check.
    chunk_counts: chunk -> occurrences; returns the merges, in order, as (left_id, right_id) pairs."""
    words = [list(_utf8(c)) for c in chunk_counts]  # each distinct chunk once, weighted by how often it occurs
    vocab, merges = [bytes([i]) for i in range(256)], []
    while len(vocab) < n_tokens:
        pairs = collections.Counter()
        for w, n in zip(words, chunk_counts.values()):
            for p in zip(w, w[1:]):
                pairs[p] += n
        if not pairs:
            break
        pair = min(pairs, key=lambda p: (-pairs[p], p))  # the highest count; ties: the smallest pair
        merges.append(pair)
        joined = vocab[pair[0]] + vocab[pair[1]]
        new = vocab.index(joined) if joined in vocab else len(vocab)  # bytes already a token: reuse its id
        if new == len(vocab):
            vocab.append(joined)
        for k, w in enumerate(words):
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[k] = out
    return merges


@dataclass
class _Counts:
    """The fast trainer's state: the words, and each adjacent pair's count, kept up to date merge by merge."""
    words: list  # each distinct chunk as a list of token ids
    weights: list  # ... and how often it occurs in the text
    # (left, right) -> occurrences in the text
    pairs: collections.defaultdict = field(default_factory=lambda: collections.defaultdict(int))
    # pair -> indices of the words that contain it. It may list a word that no longer contains the pair (a merge
    # removed it): merging just finds nothing there. It is never missing a word that does.
    where: collections.defaultdict = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, p, i, n):
        self.pairs[p] += n
        if not self.where[p] or self.where[p][-1] != i:
            self.where[p].append(i)


def learn_merges(chunk_counts, n_tokens, bar):
    """Same merges as learn_merges_plain: the most frequent adjacent pair until there are `n_tokens` tokens,
    ties to the smallest (left_id, right_id). Merge k normally creates token 256 + k; if its bytes equal an
    existing token's (possible in principle, not seen in practice) it reuses that id, so every token's bytes are
    distinct, as tiktoken requires. What it saves: a merge touches only the words that contain its pair and the
    counts of its neighbours (incremental pair counts), and a heap finds the next pair without a scan."""
    c = _Counts([list(_utf8(w)) for w in chunk_counts], list(chunk_counts.values()))
    for i, (w, n) in enumerate(zip(c.words, c.weights)):
        for p in zip(w, w[1:]):
            c.add(p, i, n)
    # A max-heap of (-count, pair): popping gives the highest count, ties to the smallest pair (tuple order).
    # Counts change after every merge, and a heap cannot update an entry in place. So entries go stale and are
    # checked when popped ("lazy invalidation"): an entry whose count is out of date is pushed again with the
    # current count. This is exact because of one invariant: every pair's heap entry holds a count >= its true
    # count. A merge only lowers the counts of existing pairs, and every pair it raises (those containing the
    # new token) is pushed with its new count. So the first up-to-date entry popped is the true maximum.
    heap = [(-n, p) for p, n in c.pairs.items()]
    heapq.heapify(heap)
    vocab = [bytes([i]) for i in range(256)]  # id -> bytes
    ids = {b: i for i, b in enumerate(vocab)}  # bytes -> id
    merges = []
    while len(vocab) < n_tokens and heap:
        neg, pair = heapq.heappop(heap)
        n = c.pairs.get(pair, 0)
        if n <= 0:
            continue
        if n != -neg:  # stale: its count fell since it was pushed
            heapq.heappush(heap, (-n, pair))
            continue
        new = ids.setdefault(vocab[pair[0]] + vocab[pair[1]], len(vocab))
        if new == len(vocab):
            vocab.append(vocab[pair[0]] + vocab[pair[1]])
        merges.append(pair)
        for q in _merge(c, pair, new):
            heapq.heappush(heap, (-c.pairs[q], q))
        if len(merges) % 256 == 0:
            bar.update(256)
    return merges


def _merge(c, pair, new):
    """Replace a, b by `new` in every word that contains the pair and fix the counts of the neighbours: in
    ... x a b y ...  (word weight n) the pairs (x,a) and (b,y) lose n, (x,new) and (new,y) gain n. Two
    occurrences back to back ("a b a b") share a neighbour: the (b,a) between them is removed once, and
    (new,new) is added once, by the second occurrence. Nothing else in a word changes. Returns the pairs
    whose counts rose."""
    (a, b), pairs, where, raised = pair, c.pairs, c.where, set()
    for i in where.pop(pair):
        w, n = c.words[i], c.weights[i]
        out, j, joined, end = [], 0, False, len(w)  # joined: out[-1] was made by this merge
        while j < end:
            if w[j] != a or j + 1 == end or w[j + 1] != b:
                out.append(w[j])
                joined = False
                j += 1
                continue
            # the neighbours' gains are c.add written out twice: this is the trainer's innermost loop
            if out:  # left neighbour
                x = out[-1]
                if not joined:
                    pairs[x, a] -= n
                q = (x, new)
                pairs[q] += n
                raised.add(q)
                if not where[q] or where[q][-1] != i:
                    where[q].append(i)
            if j + 2 < end:  # right neighbour (unless it starts the next occurrence, which adds it)
                y = w[j + 2]
                pairs[b, y] -= n
                if y != a or j + 3 == end or w[j + 3] != b:
                    q = (new, y)
                    pairs[q] += n
                    raised.add(q)
                    if not where[q] or where[q][-1] != i:
                        where[q].append(i)
            out.append(new)
            joined = True
            j += 2
        c.words[i] = out
    del pairs[pair]  # every occurrence is gone (left-to-right replacement leaves no a-b neighbours)
    return raised


class BPETokenizer:
    """Byte-level BPE: 256 byte tokens, then one token per merge, then the special tokens.

    Build one with `BPETokenizer.train(...)` or `BPETokenizer.load(path)`. Encoding follows tiktoken exactly
    (`to_tiktoken()` gives the same ids, at Rust speed): split the text with the pattern, then within each chunk
    repeatedly join the adjacent pair whose joined bytes have the lowest id (leftmost on ties).
    """

    def __init__(self, merges, pattern="gpt4", special_tokens=()):
        self.pattern = pattern  # a name in PATTERNS or a regex
        self.regex = regex.compile(PATTERNS.get(pattern, pattern))
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.vocab = [bytes([i]) for i in range(256)]  # id -> bytes
        self.ranks = {b: i for i, b in enumerate(self.vocab)}  # bytes -> id; lower id = merged earlier
        for k, (a, b) in enumerate(self.merges):
            if not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
                raise ValueError(f"merge {k} ({a}, {b}) uses an id that does not exist yet "
                                 f"(ids 0..{len(self.vocab) - 1} exist at that point)")
            t = self.vocab[a] + self.vocab[b]
            if t not in self.ranks:
                self.ranks[t] = len(self.vocab)
                self.vocab.append(t)
        if len(set(special_tokens)) != len(special_tokens) or not all(
                isinstance(t, str) and t for t in special_tokens):
            raise ValueError(f"special tokens must be distinct non-empty strings, got {list(special_tokens)!r}")
        self.special_tokens = {t: len(self.vocab) + i for i, t in enumerate(special_tokens)}
        self.vocab_size = len(self.vocab) + len(self.special_tokens)
        self.cache = {}  # chunk -> ids; text repeats its words, so most chunks are encoded once

    @classmethod
    def train(cls, texts, vocab_size, pattern="gpt4", special_tokens=("<|endoftext|>",), workers=None,
              progress=None):
        """Learn a vocabulary of `vocab_size` ids (256 bytes + merges + special tokens) from `texts`.

        texts: one string, or any iterable of strings (a list, a generator over files or a dataset: it is read
        once, a few megabytes at a time). pattern: 'gpt2', 'gpt4' or a regex. workers: processes that split and
        count chunks (default: every core). progress: tqdm bars (default: for inputs over 8 MB).
        Training stops early, with a smaller vocabulary, if the text runs out of pairs to merge.
        """
        from tqdm import tqdm
        special_tokens = list(special_tokens)
        n_tokens = vocab_size - len(special_tokens)
        if n_tokens < 256:
            raise ValueError(f"vocab_size {vocab_size} leaves no room: 256 byte tokens + {len(special_tokens)} "
                             f"special tokens come first")
        cls([], pattern, special_tokens)  # checks the pattern and the special tokens before the long part
        texts = [texts] if isinstance(texts, str) else texts
        total = sum(map(len, texts)) if isinstance(texts, (list, tuple)) else None
        show = progress if progress is not None else (total is None or total > 8_000_000)
        workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        with tqdm(total=total, desc="counting chunks", unit="char", unit_scale=True, disable=not show) as bar:
            counts = count_chunks(texts, PATTERNS.get(pattern, pattern), special_tokens, workers, bar)
        with tqdm(total=n_tokens - 256, desc="merging", unit="merge", disable=not show) as bar:
            merges = learn_merges(counts, n_tokens, bar)
            bar.update(bar.total - bar.n)
        return cls(merges, pattern, special_tokens)

    @property
    def eot_token(self):
        return self.special_tokens.get("<|endoftext|>")

    def _bpe(self, piece):
        """Token ids of one chunk's bytes: join the lowest-ranked adjacent pair until no pair is a token."""
        parts, ranks = [piece[i:i + 1] for i in range(len(piece))], self.ranks
        while len(parts) > 1:
            best, at = None, 0
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        return [ranks[p] for p in parts]

    def encode_ordinary(self, text):
        """Ids of `text`, with any special-token strings in it treated as plain text."""
        ids, cache = [], self.cache
        if len(cache) > 200_000:  # a bounded cache: plenty for any one corpus's frequent words
            cache.clear()
        for chunk in self.regex.findall(text):
            t = cache.get(chunk)
            if t is None:
                t = cache[chunk] = self._bpe(_utf8(chunk))
            ids.extend(t)
        return ids

    def encode(self, text, allowed_special=(), disallowed_special="all"):
        ids = []
        for piece, special in _split_special(text, self.special_tokens, allowed_special, disallowed_special):
            if special is None:
                ids.extend(self.encode_ordinary(piece))
            else:
                ids.append(self.special_tokens[special])
        return ids

    def decode(self, ids):
        """Text of the ids; bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        specials = {i: t.encode("utf-8") for t, i in self.special_tokens.items()}
        n = len(self.vocab)
        return b"".join(self.vocab[i] if i < n else specials[i] for i in ids).decode("utf-8", errors="replace")

    def to_tiktoken(self):
        """The same tokenizer as a tiktoken.Encoding: identical ids, Rust speed, no download."""
        import tiktoken
        return tiktoken.Encoding(name=f"bpe{self.vocab_size}", pat_str=PATTERNS.get(self.pattern, self.pattern),
                                 mergeable_ranks=dict(self.ranks), special_tokens=dict(self.special_tokens))

    def to_spec(self):
        return {"kind": "bpe", "pattern": self.pattern, "merges": [list(m) for m in self.merges],
                "special_tokens": list(self.special_tokens)}

    def save(self, path):
        """One JSON file, one merge per line: [left_id, right_id, "the new token as text"]. The text is for
        people reading the file (bytes that are not UTF-8 shown as \\xNN); load checks that it matches."""
        rows = [json.dumps([a, b, self._show(self.vocab[a] + self.vocab[b])], ensure_ascii=False)
                for a, b in self.merges]
        head = {"format": FORMAT, "version": 1, "pattern": self.pattern, "vocab_size": self.vocab_size,
                "special_tokens": list(self.special_tokens)}
        text = json.dumps(head, ensure_ascii=False)[:-1] + ',\n "merges": [\n  ' + ",\n  ".join(rows) + "\n ]\n}\n"
        with atomic_write(path) as f:  # a temporary file renamed into place: never half-written
            f.write(text.encode("utf-8"))

    @staticmethod
    def _show(b):
        return b.decode("utf-8", errors="backslashreplace")

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"{path} is not a BPE tokenizer file (no \"format\": \"{FORMAT}\")")
        if d.get("version") != 1:
            raise ValueError(f"{path}: unsupported version {d.get('version')!r} (this code reads version 1)")
        try:
            tok = _from_fields(d, with_text=True)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if "vocab_size" in d and d["vocab_size"] != tok.vocab_size:
            raise ValueError(f"{path}: vocab_size says {d['vocab_size']} but the merges and special tokens make "
                             f"{tok.vocab_size}")
        return tok


def _from_fields(d, with_text=False):
    """A BPETokenizer from a saved file's or a spec's fields, naming the first thing that is wrong."""
    for key in ("pattern", "merges", "special_tokens"):
        if key not in d:
            raise ValueError(f"missing {key!r}")
    pattern, merges, specials = d["pattern"], d["merges"], d["special_tokens"]
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string (a name in {sorted(PATTERNS)} or a regex)")
    try:
        regex.compile(PATTERNS.get(pattern, pattern))
    except regex.error as e:
        raise ValueError(f"pattern {pattern!r:.60} is not a valid regex ({e})") from None
    if not isinstance(merges, list):
        raise ValueError("merges must be a list of [left_id, right_id] pairs")
    if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
        raise ValueError("special_tokens must be a list of strings")
    seen, pairs = {}, []
    for k, m in enumerate(merges):
        n = 3 if with_text else 2
        if (not isinstance(m, list) or len(m) not in (2, n) or not all(type(x) is int for x in m[:2])
                or (len(m) == 3 and not isinstance(m[2], str))):
            want = '[left_id, right_id, "text"]' if with_text else "[left_id, right_id]"
            raise ValueError(f"merge {k} is {m!r:.80}; expected {want}")
        p = (m[0], m[1])
        if p in seen:
            raise ValueError(f"merge {k} {list(p)} repeats merge {seen[p]}")
        seen[p] = k
        pairs.append(p)
    tok = BPETokenizer(pairs, pattern, specials)
    if with_text:
        for k, m in enumerate(merges):
            if len(m) == 3:
                a, b = m[0], m[1]
                want = BPETokenizer._show(tok.vocab[a] + tok.vocab[b])
                if m[2] != want:
                    raise ValueError(f"merge {k} [{a}, {b}] says its token is {m[2]!r} but ids {a} and {b} "
                                     f"join to {want!r}")
    return tok


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

    def to_tiktoken(self):
        return self.enc

    def to_spec(self):
        return {"kind": "tiktoken", "name": self.name, "special_tokens": self.extra_special}


def from_spec(spec):
    """Rebuild a tokenizer from its spec (the dict stored in meta.json and checkpoints)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"not a tokenizer spec: {spec!r:.100}")
    kind, specials = spec["kind"], spec.get("special_tokens", [])
    if not isinstance(specials, list) or not all(isinstance(t, str) and t for t in specials) or len(
            set(specials)) != len(specials):
        raise ValueError(f"the tokenizer's special_tokens must be a list of distinct non-empty strings, got "
                         f"{specials!r:.80}")
    if kind == "char":
        if not isinstance(spec.get("chars"), str):
            raise ValueError("a char tokenizer's spec needs 'chars', a string of its characters")
        return CharTokenizer(spec["chars"], specials)
    if kind == "tiktoken":
        if not isinstance(spec.get("name"), str):
            raise ValueError(f"a tiktoken tokenizer's spec needs 'name', one of {', '.join(TIKTOKEN_NAMES)}")
        return TiktokenTokenizer(spec["name"], specials)
    if kind == "bpe":
        return _from_fields(spec)
    raise ValueError(f"unknown tokenizer kind {kind!r} (known: char, bpe, tiktoken)")


def text_files(path):
    """The file at `path`, or every file under the folder `path` (sorted, so runs are reproducible)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if not f.startswith("."))
        if not files:
            raise ValueError(f"no files under {path}")
        return files
    if os.path.isfile(path):
        return [path]
    raise ValueError(f"{path} does not exist")


def read_texts(files):
    """Each file's text in turn: a corpus is read one file at a time, never all at once."""
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                yield fh.read()
        except UnicodeDecodeError:
            raise ValueError(f"{f} is not UTF-8 text") from None


def main(argv=None):
    import time
    p = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer, or look at how one encodes text.",
                                epilog="examples:\n" + __doc__.rstrip().split("\n\n")[-1],  # the docstring's
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="learn a vocabulary from a file or a folder of UTF-8 text files")
    t.add_argument("--input", required=True, help="a text file, or a folder (every file under it)")
    t.add_argument("--vocab_size", type=int, required=True, help="256 bytes + merges + special tokens")
    t.add_argument("--out", required=True, help="where to write the tokenizer (JSON)")
    t.add_argument("--pattern", default="gpt4", help="split regex: gpt2, gpt4 (default) or your own regex")
    t.add_argument("--special_tokens", nargs="*", default=["<|endoftext|>"], help="default: <|endoftext|>")
    t.add_argument("--workers", type=int, help="processes that count chunks (default: all cores)")
    e = sub.add_parser("encode", help="print the ids and pieces of a text")
    e.add_argument("--tokenizer", required=True, help="a file written by `tokenizer.py train`")
    e.add_argument("text")
    e.add_argument("--allow_special", action="store_true", help="encode special-token strings as their ids")
    args = p.parse_args(argv)
    try:
        if args.command == "train":
            t0 = time.perf_counter()
            files = text_files(args.input)
            tok = BPETokenizer.train(read_texts(files), args.vocab_size, args.pattern, args.special_tokens,
                                     args.workers, progress=sum(map(os.path.getsize, files)) > 8_000_000)
            tok.save(args.out)
            note = "" if tok.vocab_size == args.vocab_size else " (the text ran out of pairs to merge)"
            print(f"{args.out}: {tok.vocab_size} tokens = 256 bytes + {len(tok.vocab) - 256} merges + "
                  f"{len(tok.special_tokens)} special{note}, in {time.perf_counter() - t0:.2f} s")
        else:
            tok = BPETokenizer.load(args.tokenizer)
            try:
                ids = tok.encode(args.text, allowed_special="all" if args.allow_special else ())
            except ValueError as err:  # a special token in the text: the message names encode()'s arguments
                raise UserError(f"{str(err).split(';')[0]}: add --allow_special to encode it as one") from None
            print(f"{len(args.text)} characters -> {len(ids)} tokens")
            print("ids:   ", ids)
            print("pieces:", " | ".join(repr(tok.decode([i])) if i >= len(tok.vocab) else
                                        repr(BPETokenizer._show(tok.vocab[i])) for i in ids))
    except (ValueError, OSError) as err:
        raise UserError(str(err)) from None


if __name__ == "__main__":
    main_guard(main)
