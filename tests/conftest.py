import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHAKESPEARE = os.path.join(ROOT, "assets", "tinyshakespeare.txt")  # the bundled copy

# a model small enough that a training step takes milliseconds on one CPU core
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
        "--gradient_accumulation_steps=1", "--dataset=shakespeare_char", "--device=cpu", "--dtype=float32",
        "--eval_iters=2", "--warmup_iters=5", "--learning_rate=3e-3", "--min_lr=3e-4"]


@pytest.fixture(scope="session")
def shakespeare_text():
    assert os.path.isfile(SHAKESPEARE), f"tests need Tiny Shakespeare at {SHAKESPEARE}"
    with open(SHAKESPEARE, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, shakespeare_text):
    """data/shakespeare_char prepared once for the whole session (read-only for the tests)."""
    import prepare_data
    from tokenizer import CharTokenizer
    root = tmp_path_factory.mktemp("data")
    tok = CharTokenizer.from_text(shakespeare_text)
    prepare_data.prepare("shakespeare_char", [shakespeare_text], tok, SHAKESPEARE, str(root))
    return str(root)


def metrics(out):
    """The records of out/metrics.jsonl."""
    import json
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def uninterrupted_and_resumed(args, tmp_path, total, half):
    """train.py to `total` iterations in one go (tmp_path/a), and to `half`, then resumed to `total` (tmp_path/b):
    the two metrics logs, for a test to compare."""
    import train
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train.main([*args, f"--out_dir={a}", f"--max_iters={total}"])
    train.main([*args, f"--out_dir={b}", f"--max_iters={half}"])
    train.main([*args, f"--out_dir={b}", f"--max_iters={total}", "--init_from=resume"])
    return metrics(a), metrics(b)


def run_script(*args, cwd=ROOT):
    """Run one of the project's scripts as a user would; return the CompletedProcess."""
    import subprocess
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def ops_seen():
    """A context whose `.seen` lists every aten op run inside it, forward and backward (CPU), with its tensor
    inputs' dtypes: (op, (dtype, ...))."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __enter__(self):
            self.seen = []
            return super().__enter__()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append((func, tuple(a.dtype for a in args if hasattr(a, "dtype"))))
            return func(*args, **(kwargs or {}))

    return Ops()
