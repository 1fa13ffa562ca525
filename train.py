"""
Train a GPT: one loop for a laptop CPU, one GPU, or many GPUs (or CPU processes) with torchrun.

    python train.py config/shakespeare_char.py
    python train.py config/shakespeare_char.py --max_iters=4000 --init_from=resume
    torchrun --standalone --nproc_per_node=8 train.py config/owt_gpt2.py

Reads data/<dataset>/ (data.py); writes out_dir/ckpt.pt (checkpoint.py), metrics.jsonl and curves.png
(metrics.py); init_from='resume' continues exactly. Under torchrun each process holds a copy of the model
(DDP) and runs its share of each step's micro-steps; gradients are averaged before the one update.
"""

import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
from checkpoint import (PRETRAINED, Progress, check_resumable, dropout_rng, fine_tune_from, from_gpt2, load_checkpoint,
                        restore, restore_dropout_rng, rng_state, save_checkpoint, training_state)
from common import UserError, catch_signals, main_guard, show
from configurator import configure
from metrics import Meter, clock, estimate_loss, flops_per_token, open_log, peak_flops, peak_memory_mb, plot_curves
from model import Dtype, GPT, GPTConfig, HEADS, ModelSettings, allow_tf32, autocast, pick_device, pick_dtype


@dataclass
class TrainConfig(ModelSettings, data.DataConfig):  # the data settings first, then the model's (model.py)
    # I/O
    out_dir: str = "out"
    init_from: str = "scratch"  # 'scratch', 'resume' (out_dir/ckpt.pt), a ckpt.pt to fine-tune, or 'gpt2'...
    eval_interval: int = 2000  # evaluate (and checkpoint) every this many iterations
    eval_iters: int = 200  # batches per split in each evaluation
    log_interval: int = 10
    always_save_checkpoint: bool = True  # False: checkpoint only when val loss improves
    save_best: bool = False  # also keep the checkpoint of the best val loss so far in out_dir/best/ckpt.pt
    wandb_log: bool = False  # also log metrics.jsonl's records to Weights & Biases (pip install wandb)
    wandb_project: str = "gpt"  # wandb: the project the run goes to
    wandb_run_name: str = ""  # wandb: the run's name ('' : out_dir's name)
    gradient_accumulation_steps: int = 40  # micro-steps per optimizer step, across all processes (DDP)
    # optimizer
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: torch.optim.Muon for the blocks' matrices, AdamW for the rest
    learning_rate: float = 6e-4  # AdamW's peak learning rate
    max_iters: int = 600000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the gradient's global norm to this (0: off)
    muon_lr: float = 0.006  # muon: peak learning rate of the matrices, in AdamW's units (match_rms_adamw)
    muon_momentum: float = 0.95  # muon: momentum of the matrices' updates (Nesterov)
    muon_weight_decay: float = 0.0  # muon: decoupled weight decay of the matrices
    bayes_kl_weight: float = 1.0  # bayes: training loss = CE + bayes_kl_weight * KL / training tokens
    # learning rate schedule: linear warmup, then cosine decay to min_lr at lr_decay_iters
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # system
    device: str = "auto"  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: Dtype = "auto"  # 'auto' (bfloat16 on GPUs that have it, else float16 on cuda, else float32)
    compile: bool = False  # torch.compile the model (worth it on a GPU for long runs)
    seed: int = 1337


def model_config(cfg, vocab_size, device="cpu"):
    """The GPTConfig a training config describes: its ModelSettings and block_size, the data's vocabulary."""
    same = {f.name: getattr(cfg, f.name) for f in fields(ModelSettings)} | {"block_size": cfg.block_size}
    pad = 64 if device.startswith("cuda") else 1  # vocab rows: a faster output matmul on GPUs, nothing on CPUs
    try:
        return GPTConfig(**same | {"vocab_size": vocab_size, "vocab_multiple": pad, "causal": cfg.objective == "clm"})
    except ValueError as e:
        raise UserError(str(e)) from None


def check(cfg):
    """Refuse settings that cannot work, before any time is spent."""
    if os.path.isfile(os.path.join(cfg.init_from, "ckpt.pt")):  # a run folder of ours, not a HuggingFace one
        raise UserError(f"init_from={cfg.init_from} is a training run's folder: pass {cfg.init_from}/ckpt.pt to "
                        f"start a new run from its weights, or --out_dir={cfg.init_from} --init_from=resume to "
                        f"continue it")
    if not (cfg.init_from in ("scratch", "resume", *PRETRAINED) or os.path.exists(cfg.init_from)):
        raise UserError(f"init_from must be 'scratch', 'resume', a ckpt.pt file, {', '.join(PRETRAINED)} or a "
                        f"HuggingFace GPT-2 folder; {cfg.init_from!r} is none of these")
    for key in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval", "eval_iters",
                "log_interval", "n_layer", "n_head", "n_embd", "lr_decay_iters"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("weight_decay", "muon_weight_decay", "grad_clip", "min_lr", "bayes_kl_weight", "warmup_iters", "seed"):
        if not getattr(cfg, key) >= 0:  # not: also refuses nan
            raise UserError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    for key in ("beta1", "beta2", "muon_momentum"):
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    if not 0 <= cfg.dropout < 1 or cfg.max_iters < 0 or not (cfg.learning_rate > 0 and cfg.muon_lr > 0):
        raise UserError("dropout must be in [0, 1), max_iters >= 0 and learning_rate, muon_lr > 0")
    data.check(cfg, cfg.head in HEADS and HEADS[cfg.head].sets)
    if cfg.objective == "mlm" and (cfg.init_from in PRETRAINED or os.path.isdir(cfg.init_from)):
        raise UserError("GPT-2's weights are a causal model without <mask>; objective='mlm' starts from scratch "
                        "or from a checkpoint trained with objective='mlm'")


# --- optimisation and its cost ------------------------------------------------------------------------------

def get_lr(it, cfg):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def set_lr(optimizers, lr):
    """The schedule's learning rate into every parameter group, scaled for Muon's (lr_scale)."""
    for group in (g for o in optimizers for g in o.param_groups):
        group["lr"] = lr * group.get("lr_scale", 1.0)


def make_optimizer(model, cfg, device):
    """A list of optimizers. [AdamW]: weight decay only on weight matrices; biases and LayerNorm gains are not
    shrunk to 0, nor a head's own parameters (bayes: rho, sigma = softplus(rho); decaying rho would pull every
    sigma towards 0.69). optimizer='muon': [AdamW, Muon], the blocks' weight matrices going to torch.optim.Muon
    (momentum, then the update orthogonalised by Newton-Schulz iterations); embeddings, the output head, norms
    and biases stay AdamW."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in named if cfg.optimizer == "muon" and n.startswith("transformer.h.") and p.dim() == 2]
    named = [(n, p) for n, p in named if not any(p is m for m in matrices)]
    own = model.head_params
    decay = [p for n, p in named if p.dim() >= 2 and n not in own]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in named if p.dim() < 2 or n in own], "weight_decay": 0.0}]
    fused = device.startswith("cuda")  # one kernel for the whole update instead of several per tensor
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)
    if not matrices:
        return [adamw]
    muon = torch.optim.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.muon_weight_decay,
                            momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw")
    muon.param_groups[0]["lr_scale"] = cfg.muon_lr / cfg.learning_rate  # follows the same schedule
    return [adamw, muon]


# --- the training loop ------------------------------------------------------------------------------------

@dataclass
class Run:
    """What the loop works on, built once by setup() and passed to the steps below."""
    cfg: TrainConfig
    d: data.Data
    model: torch.nn.Module  # what a training step calls: compiled and/or wrapped in DDP
    log_probs: object  # what rank 0 evaluates with: raw.log_probs, compiled or not (never DDP, which may wait)
    raw: GPT  # the model itself, whose weights are saved
    optimizers: list  # make_optimizer's
    scaler: torch.amp.GradScaler  # fp16's loss scaling; a no-op otherwise
    gen: torch.Generator  # the batch stream: seeded alike on every rank, each takes its own rows
    rank: int
    world: int
    device: str
    ctx: object  # autocast, or nothing for fp32
    start: float = 0.0  # when the run began (time.time()), counted across resumes: time_s in the logs


def setup(cfg, rank, world, device, say):
    """The Run, and its Progress: fresh, or restored from out_dir/ckpt.pt (init_from='resume')."""
    dtype = pick_dtype(cfg.dtype, device)
    say(show(cfg))
    torch.manual_seed(cfg.seed)  # the same on every rank: identical init (DDP also copies rank 0's weights)
    allow_tf32(device)
    d = data.load(cfg)
    if d.table is not None:
        say(f"ngram targets: {len(d.table[0]):,} contexts, {len(d.table[2]) / len(d.table[0]):.2f} next tokens each")
    mconf = model_config(cfg, d.vocab_size, device)
    ckpt = load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"), device) if cfg.init_from == "resume" else None
    if ckpt is not None:
        mconf = check_resumable(ckpt, mconf, cfg.optimizer, cfg.out_dir)
    if cfg.init_from in PRETRAINED or os.path.isdir(cfg.init_from):
        model = from_gpt2(cfg.init_from, mconf, d.meta["tokenizer"]).to(device)
    else:
        model = GPT(mconf).to(device)
    if os.path.isfile(cfg.init_from):
        fine_tune_from(model, load_checkpoint(cfg.init_from, device), d.spec)
    say(f"model: {model.num_params() / 1e6:.2f}M parameters")
    optimizers = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))
    gen = torch.Generator().manual_seed(cfg.seed)
    if rank:
        torch.manual_seed(cfg.seed + rank)  # dropout masks differ between ranks (rank 0's = one process's)
    progress = Progress()
    if ckpt is not None:
        progress = restore(ckpt, model, optimizers, scaler, gen, os.path.join(cfg.out_dir, "ckpt.pt"))
        if not restore_dropout_rng(ckpt["rng"], rank, world, device) and cfg.dropout > 0:
            say(f"note: the checkpoint was written by another number of processes than this run's {world}: "
                f"batches continue exactly, dropout masks from fresh seeds")
        say(f"resuming from {cfg.out_dir}/ckpt.pt at iter {progress.iter_num}")
    if cfg.compile:
        say("compiling the model (about a minute)...")
    compiled = torch.compile(model) if cfg.compile else model
    wrapped = DDP(compiled, device_ids=[device] if device.startswith("cuda") else None) if world > 1 else compiled
    log_probs = torch.compile(model.log_probs) if cfg.compile else model.log_probs  # a module compiles forward only
    return Run(cfg, d, wrapped, log_probs, model, optimizers, scaler, gen, rank, world, device,
               autocast(device, dtype)), progress


def step(r, it, got_signal):
    """One optimizer step: every micro-step's forward and backward (gradients synced on the last), clipping,
    then the update, unless a loss or gradient is not finite: then no update at all. Returns (the step's loss,
    the bayes KL term or None, input tokens, diverged, interrupted); the last two agreed on by every rank."""
    cfg, gas = r.cfg, r.cfg.gradient_accumulation_steps // r.world  # this rank's micro-steps
    # window starts (or pieces) for every micro-step of every rank; this rank's are rows rank*gas .. +gas-1
    starts = torch.randint(data.batch_rows(r.d, "train"), (r.world * gas, cfg.batch_size), generator=r.gen)
    loss_sum, kl = torch.zeros((), device=r.device), None
    for micro in range(gas):
        m = r.rank * gas + micro  # the micro-step's place in the whole step: its rows and its masking seed
        b = data.get_batch(r.d, "train", starts[m].tolist(), r.device, data.mask_seed(cfg.seed, 0, it, m))
        # DDP averages gradients across ranks during backward; only the last micro-step needs it
        with nullcontext() if r.world == 1 or micro == gas - 1 else r.model.no_sync():
            with r.ctx:
                _, loss = r.model(b.x, b.y, b.mask, b.sets)
                loss = loss / gas  # the sum over micro-steps (and DDP's mean over ranks) is the batch mean
            loss_sum += loss.detach()
            reg = r.raw.head.regulariser(r.raw) if micro == 0 else None  # bayes: the KL, once per step
            if reg is not None:  # per training token, and logged apart from the loss
                kl = reg * cfg.bayes_kl_weight / len(r.d.splits["train"])
                loss = loss + kl
            r.scaler.scale(loss).backward()
    grad_ok = True
    if cfg.grad_clip > 0:
        for o in r.optimizers:
            r.scaler.unscale_(o)
        norm = torch.nn.utils.clip_grad_norm_(r.model.parameters(), cfg.grad_clip)
        # an inf gradient under fp16 is the GradScaler's business (it skips the step and lowers the scale)
        grad_ok = r.scaler.is_enabled() or torch.isfinite(norm)
    # Every rank must stop (or save, after a signal) at the same step, or the others would wait forever in the
    # next collective: one all-reduce of both flags, and one wait for the GPU per step.
    bad = ~(torch.isfinite(loss_sum) & grad_ok)
    if kl is not None:
        bad |= ~torch.isfinite(kl.detach())
    flags = torch.stack([bad.float(), torch.tensor(float("signum" in got_signal), device=r.device)])
    if r.world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    diverged, interrupted = (bool(f) for f in flags.tolist())
    if not diverged:
        for o in r.optimizers:  # each skips its step if its gradients overflowed fp16
            r.scaler.step(o)
        r.scaler.update()
    for o in r.optimizers:
        o.zero_grad(set_to_none=True)  # frees the gradients' memory until the next backward
    return loss_sum, kl, data.count_tokens(r.d, starts), diverged, interrupted


def save(r, progress, states, sub=""):
    """out_dir/sub/ckpt.pt with the training state at this iteration; returns the iteration saved."""
    state = training_state(r.raw, r.optimizers, r.scaler, progress, rng_state(r.gen, states))
    save_checkpoint(os.path.join(r.cfg.out_dir, sub, "ckpt.pt"), state | {"config": asdict(r.cfg), "tokenizer": r.d.spec})
    return progress.iter_num


def evaluate(r, progress, lr, log, saved_at):
    """Evaluate (rank 0), log it and save ckpt.pt when val improved or always_save_checkpoint; returns the
    iteration ckpt.pt holds. A loss that is not finite is never saved over a good checkpoint."""
    states = dropout_rng(r.world, r.device)  # before rank 0 goes on alone: every rank takes part
    if r.rank:
        return saved_at
    losses = estimate_loss(r.raw, r.d, r.cfg, r.device, r.ctx, r.log_probs)
    progress.elapsed = time.time() - r.start
    it = progress.iter_num
    print(f"iter {it}/{r.cfg.max_iters}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
          f"({clock(progress.elapsed)})")
    log.write({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr,
                "time_s": progress.elapsed}, saved_at)
    # under torchrun the other ranks are stopped by torchrun when rank 0 exits with this
    if not all(map(math.isfinite, losses.values())):
        raise UserError(f"the evaluated loss is not finite at iteration {it}; not saved: "
                        f"{r.cfg.out_dir}/ckpt.pt still holds iteration {saved_at}")
    improved = losses["val"] < progress.best_val_loss
    progress.best_val_loss = min(progress.best_val_loss, losses["val"])
    if improved and r.cfg.save_best:  # a folder evaluate.py reads like any run's
        save(r, progress, states, "best")
    return save(r, progress, states) if improved or r.cfg.always_save_checkpoint else saved_at


def train(cfg, rank, world, device, t0, got_signal=None):
    got_signal = {} if got_signal is None else got_signal  # catch_signals fills it in main()
    say = print if rank == 0 else (lambda *a, **k: None)  # rank 0 alone prints, evaluates and writes files
    r, progress = setup(cfg, rank, world, device, say)
    r.start = t0 - progress.elapsed
    resumed_at = progress.iter_num if cfg.init_from == "resume" else -1
    saved_at = resumed_at if resumed_at >= 0 else None  # the iteration ckpt.pt holds, for the messages
    log = open_log(os.path.join(cfg.out_dir, "metrics.jsonl"), saved_at, cfg) if rank == 0 else None
    say(f"tokens per iteration: {cfg.batch_size} batch * {cfg.block_size} block * {cfg.gradient_accumulation_steps}"
        f" accum = {cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps:,}"
        + (f" ({world} processes x {cfg.gradient_accumulation_steps // world} micro-steps)" if world > 1 else "")
        + (" at most (padding is not counted in tok/s)" if r.d.pieces else ""))
    meter = Meter(peak_flops(device, pick_dtype(cfg.dtype, device)), flops_per_token(r.raw, cfg.block_size))
    interrupted = False  # a signal arrived and every rank knows it: save and stop at the next iteration
    while True:
        it = progress.iter_num
        lr = get_lr(it, cfg)
        set_lr(r.optimizers, lr)
        if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and it != resumed_at:
            t = time.time()
            saved_at = evaluate(r, progress, lr, log, saved_at)
            meter.eval_times.append(time.time() - t)
        if it >= cfg.max_iters:
            break
        if interrupted:  # the iteration the signal arrived in is done: save here (the evaluation came first)
            stop(r, progress, saved_at, got_signal["signum"])
        t_step = time.time()
        loss, kl, tokens, diverged, interrupted = step(r, it, got_signal)
        if diverged:
            diverged_stop(r, it, saved_at)
        if it % cfg.log_interval == 0:
            if world > 1:  # the loss of the whole step, not just rank 0's share
                dist.all_reduce(loss)
                loss /= world
            loss = loss.item()  # .item() waits for the GPU: only once per log line
        meter.step(time.time() - t_step, tokens)
        if it % cfg.log_interval == 0:
            ms, tps, mfu = meter.take(world)
            say(f"iter {it}/{cfg.max_iters}: loss {loss:.4f}, {ms:.0f} ms/iter, {tps:,.0f} tok/s"
                  + (f", mfu {mfu * 100:.1f}%" if mfu else "") + f", eta {clock(meter.left(cfg, it))}")
            if rank == 0:
                log.write({"iter": it, "loss": loss, "lr": lr, "ms_per_iter": ms, "tokens_per_s": tps, "mfu": mfu,
                           "time_s": time.time() - r.start, "peak_mem_mb": peak_memory_mb(device)}
                          | ({"kl": kl.item()} if kl is not None else {}), saved_at)
        progress.iter_num += 1
    finish(r, progress, log)


def diverged_stop(r, it, saved_at):
    """A loss or gradient that is not finite: every rank stops before the update; rank 0 says why."""
    if r.rank:
        sys.exit(2)
    raise UserError(f"the loss (or its gradient) is not finite at iteration {it}"
                    + (" on some process" if r.world > 1 else "") + ": stopped before the optimizer step; "
                    + (f"{r.cfg.out_dir}/ckpt.pt still holds iteration {saved_at}" if saved_at is not None
                       else "no checkpoint was written") + ". Try a lower learning_rate, or dtype=bfloat16")


def stop(r, progress, saved_at, signum):
    """After a signal: save at this iteration (unless the evaluation just did) and exit as the shell expects."""
    states = dropout_rng(r.world, r.device)
    if r.rank == 0 and saved_at != progress.iter_num:
        progress.elapsed = time.time() - r.start
        save(r, progress, states)
    if r.rank == 0:
        print(f"stopped by {signal.Signals(signum).name} at iteration {progress.iter_num}; {r.cfg.out_dir}/ckpt.pt "
              f"holds it: continue with --init_from=resume")
    if r.world > 1:
        dist.barrier()  # leave together, after rank 0 has written (see the end of finish)
    sys.exit(128 + signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def finish(r, progress, log):
    """The curves and the last line. Every rank waits for rank 0's writes before the process group goes (a
    peer leaving while rank 0 still used it was seen as a rare abort at exit)."""
    if r.rank == 0:
        log.close()
        plot_curves(log.path, os.path.join(r.cfg.out_dir, "curves.png"))
        print(f"done in {clock(time.time() - r.start)}: best val loss {progress.best_val_loss:.4f}, checkpoint in "
              f"{r.cfg.out_dir}/ckpt.pt")
    if r.world > 1:
        dist.barrier()


def setup_ddp(cfg):
    """(rank, world_size, device): torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; GPUs talk nccl, CPUs gloo."""
    device = pick_device(cfg.device)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if cfg.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of "
                        f"the number of processes ({world}): each runs an equal share of the micro-steps")
    if device.startswith("cuda"):
        device = f"cuda:{local}"  # one GPU per process, whatever the config named
        torch.cuda.set_device(device)
    elif device != "cpu":
        raise UserError(f"torchrun needs device cuda or cpu, not {device}")
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def main(argv=None):
    t0 = time.time()
    cfg = configure(TrainConfig, argv)
    check(cfg)
    rank, world, device = setup_ddp(cfg)
    got_signal, restore_signals = catch_signals(world)
    try:
        train(cfg, rank, world, device, t0, got_signal)
    finally:
        restore_signals()
        if world > 1:
            dist.destroy_process_group()  # also on errors: no process left waiting on the others


if __name__ == "__main__":
    main_guard(main)
