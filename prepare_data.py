"""
Turn text into the token files that train.py reads.

    python prepare_data.py shakespeare_char                      # the bundled Tiny Shakespeare, char tokens
    python prepare_data.py text --input https://example.com/book.txt --name book   # any text, by https URL
    python prepare_data.py shakespeare                           # the same text in GPT-2 BPE tokens
    python prepare_data.py shakespeare --tokenizer bpe --vocab_size 4096   # a BPE trained here, on train only
    python prepare_data.py text --input my_corpus/ --name mine --tokenizer char
    python prepare_data.py openwebtext --num_proc 8                   # 8M web pages, GPT-2 tokens (~9B)
    python prepare_data.py hf --dataset roneneldan/TinyStories --val_split validation --name tinystories
    python prepare_data.py hf --dataset json --data_files docs.jsonl --text_field body --name mine

writes data/<name>/train.bin, val.bin and meta.json:
- train.bin / val.bin: every token id in order, as a flat array of uint16 (uint32 when the vocabulary has
  more than 65,536 ids), so train.py can np.memmap them and slice windows without loading anything.
- meta.json: vocab_size, dtype, token counts, the largest id of each split (train_max_id, val_max_id), the
  source, and the tokenizer spec (JSON, never pickle).
- tokenizer.json, with --tokenizer bpe: the trained tokenizer (also inside meta.json), for `tokenizer.py encode`.
For text and Shakespeare, the first 90% of the text is the training split, the last 10% the validation split;
a HuggingFace dataset keeps its own validation split (--val_split) or gives a random --val_fraction of its
documents to it. A BPE tokenizer is trained on the training split only: validation text stays text the whole
pipeline has never seen.

Every file is written to a temporary name and renamed into place when complete. meta.json, which says
that the token files belong together, is removed before the renames and put back last: a run killed while
writing leaves the previous files as they were; one killed between the renames leaves no meta.json, and
train.py asks for prepare_data.py to be run again instead of reading a mix of old and new files.
"""

import argparse
import contextlib
import glob
import hashlib
import json
import os
import re
import urllib.request

import numpy as np
from tqdm import tqdm

from common import UserError, atomic_write, fault_point, main_guard
from tokenizer import TIKTOKEN_NAMES, BPETokenizer, CharTokenizer, TiktokenTokenizer, cut_text, read_texts, text_files

# Tiny Shakespeare (public domain, 1,115,394 bytes) ships with the repository, so the quickstart and the tests
# work offline; its sha256 catches a copy changed by an editor or a line-ending conversion
SHAKESPEARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tinyshakespeare.txt")
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# a known dataset: its default tokenizer
DATASETS = {"shakespeare_char": "char", "shakespeare": "gpt2"}
CHUNK = 1 << 20  # characters encoded at a time: bounds memory, drives the progress bar
MAX_DOWNLOAD = 200_000_000  # bytes: a text corpus fetched by URL here is megabytes; refuse anything absurd


def download(url):
    """The text at an https URL (plain http could be altered on the way), at most MAX_DOWNLOAD bytes."""
    if not url.startswith("https://"):
        raise UserError(f"refusing to download {url}: only https:// URLs")
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read(MAX_DOWNLOAD + 1)  # one byte more than allowed: enough to know it is too big
    except OSError as e:
        raise UserError(f"could not download {url} ({e}); if this machine is offline, download the "
                        f"file elsewhere and pass it with --input PATH") from None
    if len(data) > MAX_DOWNLOAD:
        raise UserError(f"{url} is larger than {MAX_DOWNLOAD:,} bytes; download it yourself and pass --input")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{url} is not UTF-8 text") from None


def bundled_shakespeare():
    """The repository's copy of Tiny Shakespeare, checked against its sha256."""
    try:
        data = open(SHAKESPEARE, "rb").read()
    except OSError as e:
        raise UserError(f"cannot read the bundled {SHAKESPEARE} ({e.strerror or e}): restore it with "
                        f"`git checkout -- assets`, or pass a copy with --input") from None
    if hashlib.sha256(data).hexdigest() != SHAKESPEARE_SHA256:
        raise UserError(f"{SHAKESPEARE} is not the original Tiny Shakespeare (sha256 differs; an editor or a "
                        f"line-ending conversion?): restore it with `git checkout -- assets`")
    return data.decode("utf-8")


def read_input(path):
    """A file, every file under a folder (sorted, so the split is reproducible), or an https URL, as a list of
    texts."""
    if path.startswith(("https://", "http://")):
        return [download(path)]
    try:
        return list(read_texts(text_files(path)))
    except ValueError as e:
        raise UserError(f"--input {e}" if "exist" in str(e) else str(e)) from None


def write_tokens(f, docs, encode, eot, dtype, name):
    """Encode docs into the open file f, each followed by the end-of-text token `eot` unless it is None.

    docs is a list of (text, is_whole_document). Returns (number of tokens, largest id)."""
    n, top = 0, -1
    total = sum(len(d) for d, _ in docs)
    with tqdm(total=total, desc=name, unit="char", unit_scale=True, disable=total < 8 * CHUNK) as bar:
        for text, whole in docs:
            # a few MB at a time, cut where no BPE chunk spans the cut: the same ids as encoding it whole
            for chunk in cut_text(text, CHUNK):
                # user text is data: a literal "<|endoftext|>" in it is ordinary text, not a document end
                ids = np.array(encode(chunk, disallowed_special=()), dtype=dtype)
                ids.tofile(f)
                n += len(ids)
                top = max(top, int(ids.max())) if len(ids) else top
                bar.update(len(chunk))
                fault_point("prepare_write")  # tests/test_faults.py kills the process here
            if whole and eot is not None:
                np.array([eot], dtype=dtype).tofile(f)
                n, top = n + 1, max(top, eot)
    return n, top


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
    docs = {"train": train, "val": val}

    def write(split, f):
        return write_tokens(f, docs[split], encode, tok.eot_token, dtype, f"{split}.bin")
    return write_splits(out, tok, dtype, write, {"source": source})


def write_splits(out, tok, dtype, write, extra):
    """Write out/train.bin and val.bin with write(split, open file) -> (tokens, largest id), then out/meta.json.
    Each file goes to a temp name and is renamed into place when complete (atomic_write); the renames happen as
    the with blocks end, innermost first: train.bin, val.bin, then meta.json last."""
    meta_path = os.path.join(out, "meta.json")
    with atomic_write(meta_path, "w") as fm:
        with atomic_write(os.path.join(out, "val.bin"), "w+b") as fv:  # w+: write_ids maps the file into memory
            with atomic_write(os.path.join(out, "train.bin"), "w+b") as ft:
                (n_train, top_train), (n_val, top_val) = write("train", ft), write("val", fv)
                if n_train == 0 or n_val == 0:
                    raise UserError(f"the {'training' if n_train == 0 else 'validation'} split has no tokens")
                # the largest ids: a reader can check them against vocab_size without a pass over the files
                meta = {"vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name, "train_tokens": n_train,
                        "val_tokens": n_val, "train_max_id": top_train, "val_max_id": top_val, **extra,
                        "tokenizer": tok.to_spec()}
                # one key per line; the tokenizer spec on one line
                fm.write(json.dumps({k: v for k, v in meta.items() if k != "tokenizer"}, indent=1)[:-2] +
                         f',\n "tokenizer": {json.dumps(meta["tokenizer"], ensure_ascii=False)}\n}}\n')
                # no meta.json while the .bin files change: a crash between the renames would otherwise leave the
                # old meta.json over a new train.bin and an old val.bin, caught by train.py only if their sizes
                # happen to differ
                with contextlib.suppress(FileNotFoundError):
                    os.remove(meta_path)
            fault_point("prepare_rename")  # train.bin is new, val.bin not yet: tests/test_faults.py kills here
        if isinstance(tok, BPETokenizer):  # a copy for `tokenizer.py encode`; meta.json holds the same
            tok.save(os.path.join(out, "tokenizer.json"))
    return meta


# --- HuggingFace datasets: OpenWebText, any dataset on the hub, local Parquet/JSON/CSV/text files ------------

OPENWEBTEXT = "Skylion007/openwebtext"
OPENWEBTEXT_DOCS = 8_013_769
LOCAL_BUILDERS = ("parquet", "json", "csv", "text", "arrow")  # `datasets`' names for reading local files


def load_hf(dataset, config=None, split="train", data_files=None, num_proc=None):
    """One split of a dataset through the `datasets` library. Datasets that still ship a loading script (which
    datasets >= 4 refuses to run) are read from the hub's Parquet conversion of them instead."""
    from datasets import load_dataset
    kw = {"sample_by": "document"} if dataset == "text" else {}  # a whole file is one document, not each line
    try:
        try:
            return load_dataset(dataset, config, split=split, data_files=data_files, num_proc=num_proc, **kw)
        except RuntimeError as e:
            if "scripts are no longer supported" not in str(e):
                raise
            print(f"{dataset} has a loading script; reading the hub's Parquet conversion (refs/convert/parquet)")
            return load_dataset(dataset, config, split=split, revision="refs/convert/parquet", num_proc=num_proc)
    except Exception as e:  # datasets raises many kinds; all mean "not loaded", none is a bug of ours
        hint = ("; if this machine is offline: run this once with internet, then set HF_DATASETS_OFFLINE=1 and "
                "HF_HUB_OFFLINE=1 to read the copy in the HuggingFace cache (HF_HOME, default "
                "~/.cache/huggingface), or give local files (--dataset parquet --data_files 'dir/*.parquet')"
                if isinstance(e, OSError) or "connect" in str(e).lower() or "offline" in str(e).lower() else "")
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise UserError(f"could not load the dataset {dataset!r} ({type(e).__name__}: {msg}){hint}")


def hf_splits(args):
    """(train, val) datasets for `openwebtext` or `hf`, each with the column args.text_field."""
    name = OPENWEBTEXT if args.dataset == "openwebtext" else args.hf_dataset
    ds = load_hf(name, args.config, args.split, args.data_files, args.num_proc)
    if args.dataset == "openwebtext" and len(ds) != OPENWEBTEXT_DOCS:
        print(f"warning: OpenWebText has {OPENWEBTEXT_DOCS:,} documents, this copy {len(ds):,} (a partial "
              f"Parquet export?)")
    if args.text_field not in ds.column_names:
        raise UserError(f"the dataset has no column {args.text_field!r}; its columns are "
                        f"{', '.join(ds.column_names)}: choose one with --text_field")
    if args.val_split:
        val = load_hf(name, args.config, args.val_split, args.data_files, args.num_proc)
        return ds, val
    if len(ds) < 2:
        raise UserError("the dataset has fewer than 2 documents: nothing to hold out for validation")
    n_val = min(len(ds) - 1, max(1, round(args.val_fraction * len(ds))))
    parts = ds.train_test_split(test_size=n_val, seed=2357, shuffle=True)  # fixed seed: the same split every time
    return parts["train"], parts["test"]


def prepare_hf(name, train, val, tok, text_field, source, out_root="data", num_proc=None):
    """Tokenize two HuggingFace datasets with num_proc workers and write data/<name>/ like `prepare` does.
    Every document ends with the end-of-text token (a newline for tokenizers without one). The token files are
    filled batch by batch through a memmap: the corpus is never in memory at once."""
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    if callable(tok):  # trains on the training split only, streamed
        tok = tok(t for batch in train.select_columns([text_field]).iter(batch_size=1000) for t in batch[text_field])
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    encode = tok.to_tiktoken().encode if isinstance(tok, BPETokenizer) else tok.encode
    end = [tok.eot_token] if tok.eot_token is not None else tok.encode("\n")

    def tokenize(batch):
        ids = [encode(t, disallowed_special=()) + end for t in batch[text_field]]
        return {"ids": ids, "len": [len(x) for x in ids]}

    def write(split, f):
        ds = train if split == "train" else val
        workers = min(num_proc or 1, max(1, len(ds) // 1000))  # at least 1,000 documents a process
        ds = ds.map(tokenize, batched=True, remove_columns=ds.column_names, num_proc=workers if workers > 1 else None,
                    desc=f"tokenizing {split}")
        return write_ids(f, ds, dtype, f"{split}.bin")

    extra = {"source": source, "train_documents": len(train), "val_documents": len(val)}
    return write_splits(out, tok, dtype, write, extra)


def write_ids(f, ds, dtype, name, batch_size=4096):
    """The tokenized dataset's 'ids', concatenated, into the open file f (opened w+b: it is mapped into memory
    and filled batch by batch); returns (number of tokens, largest id)."""
    n = int(sum(ds["len"]))
    if n == 0:
        return 0, -1
    arr = np.memmap(f, dtype=dtype, mode="w+", shape=(n,))
    i, top = 0, -1
    batches = ds.select_columns(["ids"]).with_format("numpy").iter(batch_size=batch_size)
    for batch in tqdm(batches, total=-(-len(ds) // batch_size), desc=f"writing {name}"):
        ids = np.concatenate(batch["ids"])
        arr[i:i + len(ids)] = ids
        i += len(ids)
        top = max(top, int(ids.max())) if len(ids) else top
    arr.flush()
    del arr  # unmapped; atomic_write fsyncs and renames the file
    return n, top


def main(argv=None):
    paragraphs = __doc__.split("\n\n")  # the purpose, then the examples
    p = argparse.ArgumentParser(description=paragraphs[0], epilog="examples:\n" + paragraphs[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=[*DATASETS, "text", "openwebtext", "hf"],
                   help="a known dataset, 'text' for --input, or 'hf' for any HuggingFace dataset (--dataset)")
    p.add_argument("--input", help="a file or folder of UTF-8 text, or an https URL (shakespeare*: instead of the "
                   "bundled copy)")
    p.add_argument("--name", help="output folder under data/ (default: the dataset name, plus _TOKENIZER when "
                   "that is not the dataset's usual one: shakespeare_bpe)")
    p.add_argument("--tokenizer", choices=["char", "bpe", *TIKTOKEN_NAMES], help="default: char for "
                   "shakespeare_char and text, gpt2 otherwise; bpe trains one here (needs --vocab_size)")
    p.add_argument("--vocab_size", type=int, help="for --tokenizer bpe: 256 bytes + merges + <|endoftext|>")
    p.add_argument("--out_root", default="data", help="where data/<name>/ goes")
    hf = p.add_argument_group("HuggingFace datasets (openwebtext, hf)")
    hf.add_argument("--dataset", dest="hf_dataset", help="hf: a hub name (roneneldan/TinyStories), a local "
                    "folder, or a file format with --data_files: parquet, json, csv, text")
    hf.add_argument("--config", help="the dataset's configuration (subset), if it has several")
    hf.add_argument("--split", default="train", help="the split to train on (default train)")
    hf.add_argument("--val_split", help="the dataset's own validation split; without it --val_fraction of the "
                    "documents is held out at random (seed 2357)")
    hf.add_argument("--val_fraction", type=float, default=0.0005, help="default 0.0005, as GPT-2 reproductions use")
    hf.add_argument("--text_field", default="text", help="the column holding the text (default text)")
    hf.add_argument("--data_files", nargs="+", help="local files or globs, for --dataset parquet/json/csv/text")
    hf.add_argument("--num_proc", type=int, default=min(8, os.cpu_count() or 1), help="tokenizing processes")
    args = p.parse_args(argv)

    kind = args.tokenizer or ("char" if args.dataset in ("shakespeare_char", "text") else "gpt2")
    if (kind == "bpe") != (args.vocab_size is not None):
        raise UserError("--vocab_size goes with --tokenizer bpe, and --tokenizer bpe needs it")
    if kind == "bpe" and args.vocab_size < 257:
        raise UserError(f"--vocab_size {args.vocab_size} is too small: 256 byte tokens + <|endoftext|> "
                        f"come first")
    if args.dataset in ("openwebtext", "hf"):
        return main_hf(args, kind)
    if args.dataset == "text":
        if not args.input or not args.name:
            p.error("text needs --input FILE_OR_FOLDER and --name NAME")
        default_tok = "char"
    else:
        default_tok = DATASETS[args.dataset]
    texts = read_input(args.input) if args.input else [bundled_shakespeare()]
    source = (args.input if args.input.startswith(("https://", "http://")) else os.path.abspath(args.input)) \
        if args.input else "assets/tinyshakespeare.txt"
    if sum(len(t) for t in texts) == 0:
        raise UserError("the input text is empty")
    name = args.name or (args.dataset if kind == default_tok else f"{args.dataset}_{kind}")
    try:
        if kind == "char":
            tok = CharTokenizer.from_text("\n".join(texts))
        elif kind == "bpe":
            tok = lambda train_texts: BPETokenizer.train(train_texts, args.vocab_size)  # noqa: E731
        else:
            tok = TiktokenTokenizer(kind)
    except OSError as e:
        raise UserError(str(e)) from None
    with write_errors(args.out_root, name):
        report(prepare(name, texts, tok, source, args.out_root), args.out_root, name)


def main_hf(args, kind):
    if args.dataset == "hf" and not args.hf_dataset:
        raise UserError("hf needs --dataset NAME (a hub dataset, a local folder, or parquet/json/csv/text "
                        "with --data_files)")
    if args.data_files and args.hf_dataset not in LOCAL_BUILDERS:
        raise UserError(f"--data_files goes with --dataset {'/'.join(LOCAL_BUILDERS)}")
    if args.hf_dataset in LOCAL_BUILDERS and not (args.data_files and args.name):
        raise UserError(f"--dataset {args.hf_dataset} reads local files: give --data_files and --name")
    if not 0 < args.val_fraction < 1 or args.num_proc < 1:
        raise UserError("--val_fraction must be in (0, 1) and --num_proc >= 1")
    base = "openwebtext" if args.dataset == "openwebtext" else re.sub(
        r"[^\w.-]", "_", args.hf_dataset.rstrip("/").split("/")[-1] + (f"_{args.config}" if args.config else ""))
    name = args.name or (base if kind == "gpt2" else f"{base}_{kind}")
    try:  # before any download: a missing tiktoken vocabulary is the quicker failure
        tok = TiktokenTokenizer(kind) if kind in TIKTOKEN_NAMES else None
    except OSError as e:
        raise UserError(str(e)) from None
    train, val = hf_splits(args)
    if kind == "bpe":
        tok = lambda texts: BPETokenizer.train(texts, args.vocab_size)  # noqa: E731
    elif kind == "char":  # every character of both splits (a char tokenizer cannot encode one it never saw)
        chars = set()
        for ds in (train, val):
            for batch in ds.select_columns([args.text_field]).iter(batch_size=1000):
                chars.update(*batch[args.text_field])
        tok = CharTokenizer.from_text("".join(chars) + "\n")
    source = (f"hf:{OPENWEBTEXT if args.dataset == 'openwebtext' else args.hf_dataset}"
              + (f" config={args.config}" if args.config else "") + f" split={args.split}"
              + (f" val_split={args.val_split}" if args.val_split else f" val_fraction={args.val_fraction}")
              + (f" data_files={' '.join(os.path.abspath(f) for f in args.data_files)}" if args.data_files else ""))
    with write_errors(args.out_root, name):
        report(prepare_hf(name, train, val, tok, args.text_field, source, args.out_root, args.num_proc),
               args.out_root, name)


@contextlib.contextmanager
def write_errors(out_root, name):
    """A full disk or a read-only folder: a message, the temp files removed, the previous files as they were
    (unless it struck between the renames: then no meta.json, and train.py asks for this to be rerun)."""
    try:
        yield
    except OSError as e:
        folder = os.path.join(out_root, name)
        for f in glob.glob(os.path.join(folder, "*.tmp")):
            os.remove(f)
        raise UserError(f"cannot write to {folder}/ ({e.strerror or e}): free some space or choose another "
                        f"--out_root") from None


def report(meta, out_root, name):
    print(f"{os.path.join(out_root, name)}: vocab_size {meta['vocab_size']}, train {meta['train_tokens']:,} tokens, "
          f"val {meta['val_tokens']:,} tokens ({meta['dtype']})")


if __name__ == "__main__":
    main_guard(main)
