"""
What a run measures and reports while it trains: the loss estimated at each evaluation; metrics.jsonl (one
JSON record a line: the local record of every run) and the same records to Weights & Biases if asked
(wandb_log); curves.png; and the speed: tokens/s, model FLOPs utilisation (MFU: the FLOP/s the model's
arithmetic needs over what the hardware could do), peak memory, and the time left.
"""

import json
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch

import data
from common import UserError, atomic_write


# --- the loss, estimated at each evaluation -------------------------------------------------------------

@torch.no_grad()
def estimate_loss(model, d, cfg, device, ctx, log_probs=None):
    """Mean NLL of the normalised prediction (the same measure for every head) over eval_iters batches per
    split; for mlm, of the masked-out tokens. Batches and masks come from fixed seeds (every evaluation scores
    the same tokens) and weight draws from a forked RNG, so evaluating never moves the training streams.
    log_probs: model.log_probs, or a compiled version of it."""
    log_probs = log_probs or model.log_probs
    model.eval()
    out = {}
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if device.startswith("cuda") else []):
        for split in d.splits:
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            losses = []
            for k in range(cfg.eval_iters):
                ix = torch.randint(data.batch_rows(d, split), (cfg.batch_size,), generator=gen).tolist()
                b = data.get_batch(d, split, ix, device, data.mask_seed(cfg.seed, 1, k), sets=False)
                with ctx:
                    logp = log_probs(b.x, b.mask)
                losses.append(torch.nn.functional.nll_loss(logp.flatten(0, 1), b.y.flatten(), ignore_index=-1).item())
            out[split] = sum(losses) / len(losses)
    model.train()
    return out



# --- metrics.jsonl and wandb -------------------------------------------------------------------------------

@dataclass
class Log:
    """Where a run's records go: metrics.jsonl, and a wandb run or None."""
    path: str
    keep: list  # the lines of an earlier metrics.jsonl this run keeps, written with its first record
    wandb: object = None
    file: object = None

    def write(self, record, saved_at):
        """One record; a full disk ends the run with a message saying which iteration ckpt.pt holds. The old
        log is replaced only now, so a run refused before its first record (bad data) leaves it as it was."""
        try:
            if self.file is None:
                with atomic_write(self.path, "w") as f:
                    f.writelines(self.keep)
                self.file = open(self.path, "a")
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            raise UserError(f"cannot write {self.path} ({e.strerror or e}); ckpt.pt holds iteration {saved_at}: "
                            f"free some space, then resume") from None
        if self.wandb is not None:  # an evaluation shares its step with a training record: "eval/" keeps both
            prefix = "eval/" if "val_loss" in record else ""
            self.wandb.log({prefix + k: v for k, v in record.items() if k != "iter" and v is not None},
                           step=record["iter"])

    def close(self):
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def open_log(path, resume_at, cfg):
    """The run's Log: metrics.jsonl (its folder made), and wandb if cfg.wandb_log. A new run (resume_at None)
    starts the file afresh; a resumed one keeps what the interrupted run logged up to the checkpoint (the
    evaluation at it included), not a line torn by a kill -9. A folder that cannot be written is found now,
    not at the first checkpoint."""
    keep = []
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        open(path, "a").close()  # writable? (appending nothing changes nothing)
        for line in open(path) if resume_at is not None else ():
            try:
                r = json.loads(line)
                if r["iter"] < resume_at or (r["iter"] == resume_at and "val_loss" in r):
                    keep.append(line.rstrip("\n") + "\n")
            except (ValueError, TypeError, KeyError):
                continue  # a line torn by a kill, or not ours: not a record
    except OSError as e:
        raise UserError(f"cannot write to {os.path.dirname(path) or '.'} ({e.strerror or e}): choose another "
                        f"out_dir") from None
    return Log(path, keep, open_wandb(cfg))


def open_wandb(cfg):
    """A Weights & Biases run logging what metrics.jsonl logs (wandb_log=True), or None. Optional: only imported
    when asked for; WANDB_MODE=offline writes it to a local folder."""
    if not cfg.wandb_log:
        return None
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_log=True needs the wandb package: pip install wandb (or set wandb_log=False)") from None
    name = cfg.wandb_run_name or os.path.basename(os.path.abspath(cfg.out_dir))
    return wandb.init(project=cfg.wandb_project, name=name, config=asdict(cfg))


def pyplot():
    """matplotlib's pyplot, drawing to files only (no display needed); imported when the first plot is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(metrics_path, png_path):
    """The loss and learning-rate curves of metrics.jsonl, as a PNG."""
    plt = pyplot()
    rows = [json.loads(line) for line in open(metrics_path)]
    train, evals = [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 1))
    ax1.plot([r["iter"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train (batch)")
    ax1.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)")
    ax1.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax1.set_ylabel("loss (nats/token)")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot([r["iter"] for r in train], [r["lr"] for r in train])
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("iteration")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_write(png_path) as f:
            fig.savefig(f, format="png", dpi=100)
    except OSError as e:
        raise UserError(f"trained and saved, but cannot write {png_path} ({e.strerror or e})") from None
    finally:
        plt.close(fig)


# --- speed: FLOPs, MFU, memory, time left --------------------------------------------------------------------

# Datasheet peaks, dense (no sparsity): (bf16/fp16 tensor cores, float32 matmuls as this project runs them:
# TF32 tensor cores from Ampere on (model.allow_tf32), plain fp32 before). The first name that matches wins.
PEAKS = {"H200": (989e12, 494e12), "H100 PCIe": (756e12, 378e12), "H100": (989e12, 494e12),
         "A100": (312e12, 156e12), "L4": (121e12, 60e12), "A10": (125e12, 62.5e12), "4090": (165e12, 82.6e12),
         "3090": (71e12, 35.6e12), "V100": (125e12, 15.7e12), "T4": (65e12, 8.1e12)}


def peak_flops(device, dtype):
    """FLOP/s the hardware could do at best: a GPU's datasheet number, or on CPU a measured matmul."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        return next(((f16 if dtype != "float32" else f32) for k, (f16, f32) in PEAKS.items() if k in name), None)
    if device != "cpu":
        return None
    dt = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    g = torch.Generator().manual_seed(0)  # its own generator: the global RNG drives dropout (exact resume)
    a, b = (torch.randn(1024, 1024, generator=g).to(dt) for _ in range(2))
    a @ b
    times = []
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 1024 ** 3 / min(times)  # the fastest run: a ceiling, not an average of interruptions


def flops_per_token(model, block_size):
    """Training FLOPs per token: 6N for the weights (2 forward + 4 backward per parameter per token) plus
    attention's 12 * n_layer * n_embd * T (q.k and att.v, forward and backward), as in the PaLM paper."""
    c = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_embd * block_size


def peak_memory_mb(device):
    """Peak memory so far: the GPU's allocated tensors on CUDA, else the process's max RSS (Python and torch
    included, ~300 MB of it before any tensor)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource  # not on Windows
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


@dataclass
class Meter:
    """The speed of the steps since the last log line, and every step's and evaluation's time so far."""
    peak: float | None  # FLOP/s the hardware could do (peak_flops), None where unknown
    flops_per_token: float  # training FLOPs per token (flops_per_token)
    seconds: float = 0.0  # since the last log line
    steps: int = 0
    tokens: int = 0
    step_times: deque = field(default_factory=lambda: deque(maxlen=1000))  # the last 1,000: a median stays cheap
    eval_times: list = field(default_factory=list)

    def step(self, seconds, tokens):
        self.seconds, self.steps, self.tokens = self.seconds + seconds, self.steps + 1, self.tokens + tokens
        self.step_times.append(seconds)

    def take(self, world):
        """(ms per step, tokens/s, MFU per process or None) since the last call, which starts a new count."""
        ms, tps = self.seconds / self.steps * 1000, self.tokens / max(self.seconds, 1e-9)
        self.seconds, self.steps, self.tokens = 0.0, 0, 0
        return ms, tps, self.flops_per_token * tps / world / self.peak if self.peak else None

    def left(self, cfg, it):
        """Seconds left after iteration `it`: the steps to go at the median of the recent steps (the typical one,
        not the average of a few slow ones), and the evaluations to come at their median."""
        steps = (cfg.max_iters - it - 1) * statistics.median(self.step_times) if self.step_times else 0.0
        evals = cfg.max_iters // cfg.eval_interval - it // cfg.eval_interval
        return steps + evals * (statistics.median(self.eval_times) if self.eval_times else 0.0)


def clock(seconds):
    """3725 -> 1h02m, 185 -> 3m05s, 42 -> 42s."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
