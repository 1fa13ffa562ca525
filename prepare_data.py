"""
Turn text into the token files that train.py reads.

    python prepare_data.py shakespeare_char                      # download Tiny Shakespeare, char tokens
    python prepare_data.py shakespeare_char --input input.txt    # ... or use a local copy (offline)
    python prepare_data.py shakespeare                           # the same text in GPT-2 BPE tokens
    python prepare_data.py shakespeare --tokenizer bpe --vocab_size 4096   # a BPE trained here, on train only
    python prepare_data.py text --input my_corpus/ --name mine --tokenizer char

writes data/<name>/train.bin, val.bin and meta.json:
- train.bin / val.bin: every token id in order, as a flat array of uint16 (uint32 when the vocabulary has
  more than 65,536 ids), so train.py can np.memmap them and slice windows without loading anything.
- meta.json: vocab_size, dtype, token counts, the source, and the tokenizer spec (JSON, never pickle).
- tokenizer.json, with --tokenizer bpe: the trained tokenizer (also inside meta.json), for `tokenizer.py encode`.
The first 90% of the text is the training split, the last 10% the validation split. A BPE tokenizer is trained
on the training split only: validation text stays text the whole pipeline has never seen.

Every file is written to a temporary name and renamed into place when complete, meta.json last: an
interrupted run leaves the previous files, never a half-written one.
"""

import argparse
import json
import os
import sys
import urllib.request

import numpy as np
from tqdm import tqdm

from tokenizer import TIKTOKEN_NAMES, BPETokenizer, CharTokenizer, TiktokenTokenizer, cut_text, read_texts, text_files

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# a known dataset: (source URL, default tokenizer)
DATASETS = {"shakespeare_char": (SHAKESPEARE_URL, "char"), "shakespeare": (SHAKESPEARE_URL, "gpt2")}
CHUNK = 1 << 20  # characters encoded at a time: bounds memory, drives the progress bar


def download(url):
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read(200_000_000 + 1)  # a text corpus here is megabytes; refuse anything absurd
    except OSError as e:
        raise SystemExit(f"error: could not download {url} ({e}); if this machine is offline, download the "
                         f"file elsewhere and pass it with --input PATH")
    if len(data) > 200_000_000:
        raise SystemExit(f"error: {url} is larger than 200 MB; download it yourself and pass --input")
    return data.decode("utf-8")


def read_input(path):
    """A file, or every file under a folder (sorted, so the split is reproducible), as one list of texts."""
    try:
        return list(read_texts(text_files(path)))
    except ValueError as e:
        raise SystemExit(f"error: --input {e}" if "exist" in str(e) else f"error: {e}")


def write_tokens(path, docs, encode, eot, dtype):
    """Encode docs into `path`.tmp, each followed by the end-of-text token `eot` unless it is None.

    docs is a list of (text, is_whole_document). Returns (temp path, number of tokens)."""
    tmp, n = path + ".tmp", 0
    total = sum(len(d) for d, _ in docs)
    with open(tmp, "wb") as f, tqdm(total=total, desc=os.path.basename(path), unit="char", unit_scale=True,
                                    disable=total < 8 * CHUNK) as bar:
        for text, whole in docs:
            # a few MB at a time, cut where no BPE chunk spans the cut: the same ids as encoding it whole
            for chunk in cut_text(text, CHUNK):
                # user text is data: a literal "<|endoftext|>" in it is ordinary text, not a document end
                ids = encode(chunk, disallowed_special=())
                np.array(ids, dtype=dtype).tofile(f)
                n += len(ids)
                bar.update(len(chunk))
            if whole and eot is not None:
                np.array([eot], dtype=dtype).tofile(f)
                n += 1
        f.flush()
        os.fsync(f.fileno())
    return tmp, n


def split_docs(texts, frac=0.9):
    """The first `frac` of all characters is train, the rest val; the document at the cut is cut in two."""
    cut = int(frac * sum(len(t) for t in texts))
    train, val, seen = [], [], 0
    for t in texts:
        if seen + len(t) <= cut:
            train.append((t, True))
        elif seen >= cut:
            val.append((t, True))
        else:
            train.append((t[:cut - seen], False))
            val.append((t[cut - seen:], True))
        seen += len(t)
    return train, val


def prepare(name, texts, tok, source, out_root="data"):
    """Split, encode and write data/<name>/{train.bin,val.bin,meta.json} atomically; return meta.

    tok: a tokenizer, or a function that trains one from a list of texts (it gets the training split only)."""
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    train, val = split_docs(texts)
    if callable(tok):
        tok = tok([t for t, _ in train])
    if tok.eot_token is None:  # no end-of-text token to mark where documents end: a newline does
        train, val = split_docs(["\n".join(texts)])
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    bpe = isinstance(tok, BPETokenizer)
    encode = tok.to_tiktoken().encode if bpe else tok.encode  # the same ids (tests/test_bpe.py), many times faster
    tmp_train, n_train = write_tokens(os.path.join(out, "train.bin"), train, encode, tok.eot_token, dtype)
    tmp_val, n_val = write_tokens(os.path.join(out, "val.bin"), val, encode, tok.eot_token, dtype)
    meta = {"vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name, "train_tokens": n_train,
            "val_tokens": n_val, "source": source, "tokenizer": tok.to_spec()}
    with open(os.path.join(out, "meta.json.tmp"), "w") as f:  # one key per line; the tokenizer spec on one line
        f.write(json.dumps({k: v for k, v in meta.items() if k != "tokenizer"}, indent=1)[:-2] +
                f',\n "tokenizer": {json.dumps(meta["tokenizer"], ensure_ascii=False)}\n}}\n')
        f.flush()
        os.fsync(f.fileno())
    # meta.json goes last: train.py checks the .bin sizes against it, so a crash between the renames
    # is caught as a mismatch instead of silently training on mixed data
    os.replace(tmp_train, os.path.join(out, "train.bin"))
    os.replace(tmp_val, os.path.join(out, "val.bin"))
    if bpe:  # a copy for `tokenizer.py encode`; meta.json holds the same and is what training reads
        tok.save(os.path.join(out, "tokenizer.json"))
    os.replace(os.path.join(out, "meta.json.tmp"), os.path.join(out, "meta.json"))
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=[*DATASETS, "text"], help="a known dataset, or 'text' for --input")
    p.add_argument("--input", help="local file or folder of UTF-8 text (instead of downloading)")
    p.add_argument("--name", help="output folder under data/ (default: the dataset name, plus _TOKENIZER when "
                   "that is not the dataset's usual one: shakespeare_bpe)")
    p.add_argument("--tokenizer", choices=["char", "bpe", *TIKTOKEN_NAMES], help="default: char for "
                   "shakespeare_char and text, gpt2 for shakespeare; bpe trains one here (needs --vocab_size)")
    p.add_argument("--vocab_size", type=int, help="for --tokenizer bpe: 256 bytes + merges + <|endoftext|>")
    p.add_argument("--out_root", default="data", help="where data/<name>/ goes")
    args = p.parse_args(argv)

    if args.dataset == "text":
        if not args.input or not args.name:
            p.error("text needs --input FILE_OR_FOLDER and --name NAME")
        url, default_tok = None, "char"
    else:
        url, default_tok = DATASETS[args.dataset]
    texts = read_input(args.input) if args.input else [download(url)]
    source = os.path.abspath(args.input) if args.input else url
    if sum(len(t) for t in texts) == 0:
        raise SystemExit("error: the input text is empty")
    kind = args.tokenizer or default_tok
    if (kind == "bpe") != (args.vocab_size is not None):
        raise SystemExit("error: --vocab_size goes with --tokenizer bpe, and --tokenizer bpe needs it")
    if kind == "bpe" and args.vocab_size < 257:
        raise SystemExit(f"error: --vocab_size {args.vocab_size} is too small: 256 byte tokens + <|endoftext|> "
                         f"come first")
    name = args.name or (args.dataset if kind == default_tok else f"{args.dataset}_{kind}")
    try:
        if kind == "char":
            tok = CharTokenizer.from_text("\n".join(texts))
        elif kind == "bpe":
            tok = lambda train_texts: BPETokenizer.train(train_texts, args.vocab_size)  # noqa: E731
        else:
            tok = TiktokenTokenizer(kind)
    except OSError as e:
        raise SystemExit(f"error: {e}")
    meta = prepare(name, texts, tok, source, args.out_root)
    out = os.path.join(args.out_root, name)
    print(f"{out}: vocab_size {meta['vocab_size']}, train {meta['train_tokens']:,} tokens, "
          f"val {meta['val_tokens']:,} tokens ({meta['dtype']})")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
