"""
Generate text from a trained checkpoint, streaming each token as it is produced.

    python sample.py                                   # from out-shakespeare-char/ckpt.pt
    python sample.py --top_p 0.9 --temperature 0.8
    python sample.py --start "ROMEO:" --num_samples 3 --max_new_tokens 200
    python sample.py --start FILE:prompt.txt --greedy
    python sample.py --out_dir out-bayes --show_uncertainty   # per token: probability, entropy (+ MI for bayes)
    python sample.py --init_from=gpt2 --start "The meaning of life is"   # OpenAI's GPT-2 (needs transformers)
    python sample.py --init_from=gpt2 --start "<|endoftext|>" --compile   # unconditional; compiled decode (GPU)
    python sample.py --out_dir=out-shakespeare-char-mlm --fill "To be, or <mask><mask><mask> to be" --greedy

Sampling knobs, applied in this order to the model's next-token distribution p:
- temperature T: p_i ∝ p_i^(1/T); below 1 sharpens toward the likeliest tokens, above 1 flattens.
- top_k: keep only the k likeliest tokens.
- top_p (nucleus): keep the smallest set of likeliest tokens whose probabilities sum to at least top_p.
- greedy (or temperature 0): always take the likeliest token; deterministic.
The tokenizer comes from the checkpoint itself, so no data folder is needed. Every head samples from its own
normalised distribution (model.log_probs): softmax; sigmoid's sigma_j / sum sigma; bayes's average of
bayes_samples weight draws.

A masked language model (trained with objective='mlm') does not continue text; it fills in blanks: --fill
takes a text with one <mask> per token to fill (per character, for a character model) and replaces them one
at a time, the mask the model is surest of first, each choice then context for the rest (generate.fill says why
that beats filling all of them from one pass). --greedy takes the likeliest token at each; otherwise the same
temperature/top-k/top-p draw as above, and --num_samples gives different fillings.
"""

import sys
import time
from dataclasses import dataclass

import torch

from checkpoint import load_model
from common import UserError, main_guard, show
from configurator import configure
from generate import fill as fill_masks, stream
from model import Dtype, autocast, pick_device, pick_dtype
from tokenizer import from_spec


@dataclass
class SampleConfig:
    out_dir: str = "out-shakespeare-char"  # where train.py wrote ckpt.pt
    init_from: str = "resume"  # 'resume' (out_dir/ckpt.pt), or GPT-2: gpt2, gpt2-medium/-large/-xl, a HF folder
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    fill: str = ""  # masked LM only: a text with <mask> tokens to fill in (or FILE:path), instead of --start
    num_samples: int = 2
    max_new_tokens: int = 500
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    show_uncertainty: bool = False  # after each sample, a line per new token: p, entropy, mutual information
    seed: int = 1337
    device: str = "auto"
    dtype: Dtype = "auto"
    # decode with a static KV cache and a compiled step (generate.stream): pays on a GPU, where it is recorded
    # as a CUDA graph; on a CPU it was 1.1-1.2x after ~20 s of compiling: only for long generations
    compile: bool = False


def check(cfg):
    if cfg.top_p is not None and not 0 < cfg.top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UserError(f"top_k must be at least 1, got {cfg.top_k}")
    if cfg.temperature < 0:
        raise UserError(f"temperature must be >= 0, got {cfg.temperature}")
    if cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise UserError("max_new_tokens must be >= 0 and num_samples >= 1")
    if cfg.seed < 0:
        raise UserError(f"seed must be >= 0, got {cfg.seed}")


def read_text(text):
    """The text itself, or the contents of the file a FILE:path names."""
    if not text.startswith("FILE:"):
        return text
    try:
        return open(text[5:], encoding="utf-8").read()
    except OSError as e:
        raise UserError(f"cannot read the prompt file: {e}")


def main(argv=None):
    cfg = configure(SampleConfig, argv)
    check(cfg)
    print(show(cfg), file=sys.stderr)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    model, spec = load_model(cfg.init_from, cfg.out_dir, device)
    try:
        tok = from_spec(spec)
    except (TypeError, ValueError, OSError) as e:
        raise UserError(f"the tokenizer of {cfg.out_dir if cfg.init_from == 'resume' else cfg.init_from} is not "
                        f"usable ({e})") from None
    model.eval().to(device)
    where = cfg.out_dir if cfg.init_from == "resume" else cfg.init_from
    if cfg.fill and model.config.causal:
        raise UserError(f"--fill needs a masked language model (trained with objective='mlm'); the model in {where} "
                        f"is causal: it continues text, give it a prompt with --start")
    if not model.config.causal:
        if not cfg.fill:
            raise UserError(f"the model in {where} is a masked language model (objective='mlm'): it fills in "
                            f"<mask> tokens instead of continuing text; use --fill \"To be, or <mask><mask><mask> "
                            f"to be\" (one <mask> per token)")
        return fill(model, tok, cfg, device, autocast(device, dtype))

    prompt = read_text(cfg.start)
    try:
        ids = tok.encode(prompt, allowed_special="all")
    except ValueError as e:
        raise UserError(f"cannot encode the prompt: {e}")
    if not ids:
        raise UserError("the prompt is empty; give at least one token with --start")
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, :]
    ctx = autocast(device, dtype)

    torch.manual_seed(cfg.seed)  # after building the model, whose init also draws random numbers
    n_tokens, t0 = 0, time.time()
    for k in range(cfg.num_samples):
        with ctx:
            out = continue_text(model, tok, ids, x, cfg)
        n_tokens += len(out) - len(ids)
        if cfg.show_uncertainty:
            show_uncertainty(model, out, len(ids), tok, ctx, device)
        sys.stdout.write("---------------\n" if k < cfg.num_samples - 1 else "")
        sys.stdout.flush()
    dt = time.time() - t0
    print(f"{n_tokens} tokens in {dt:.2f} s: {n_tokens / max(dt, 1e-9):.1f} tokens/s"
          + (" (the compile included)" if cfg.compile else ""), file=sys.stderr)


def continue_text(model, tok, ids, x, cfg):
    """Print the prompt and one sample after it as it is generated; return the prompt's ids and the new ones."""
    out, shown = list(ids), len(tok.decode(ids))
    sys.stdout.write(tok.decode(ids))
    tokens = stream(model, x, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.greedy,
                    stop_token=tok.eot_token, compile=cfg.compile)
    for nxt in token_ids(tokens):
        out.append(nxt)
        # decode the whole sample and print what is new: a multi-byte character split across BPE tokens shows
        # up as U+FFFD until its last byte arrives, so hold it back until then
        text = tok.decode(out)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
        if nxt == tok.eot_token:  # the stream may repeat it a few more times (generate.stream)
            break
    sys.stdout.write(tok.decode(out)[shown:] + "\n")
    return out


def token_ids(tokens, n=16):
    """The ids of a stream of (1, 1) token tensors as ints, fetched from the device n at a time: one .item() per
    token would make the host wait for every step before queueing the next."""
    pending = []
    for t in tokens:
        pending.append(t)
        if len(pending) == n:
            yield from torch.cat(pending, 1)[0].tolist()
            pending = []
    if pending:
        yield from torch.cat(pending, 1)[0].tolist()


def fill(model, tok, cfg, device, ctx):
    """--fill: print the text with every <mask> filled in, num_samples times (generate.fill)."""
    mask = tok.special_tokens.get("<mask>")
    try:
        ids = tok.encode(read_text(cfg.fill), allowed_special={"<mask>"} if mask is not None else ())
    except ValueError as e:
        raise UserError(f"cannot encode the --fill text: {e}")
    if mask is None or mask not in ids:
        raise UserError("the --fill text has no <mask>: put one where each token should be filled in")
    if len(ids) > model.config.block_size:
        raise UserError(f"the --fill text is {len(ids)} tokens long; the model reads at most {model.config.block_size}")
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, :]
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    for k in range(cfg.num_samples):
        with ctx:
            out = fill_masks(model, x, mask, mask, cfg.temperature, cfg.top_k, cfg.top_p, cfg.greedy)
        sys.stdout.write(tok.decode(out[0].tolist()) + "\n")
        sys.stdout.write("---------------\n" if k < cfg.num_samples - 1 else "")
        sys.stdout.flush()
    n = cfg.num_samples * ids.count(mask)
    print(f"{n} masks filled in {time.time() - t0:.2f} s (one forward pass each)", file=sys.stderr)


def show_uncertainty(model, ids, n_prompt, tok, ctx, device):
    """For every generated token: its probability, the entropy of the distribution it was drawn from (nats:
    0 = certain, ln V = uniform) and, for the bayes head, the part of that entropy that is disagreement between
    weight draws (mutual information: what more data would resolve). Recomputed with a forward pass over the
    last block_size tokens (for bayes with fresh weight draws, so p differs slightly from sampling time)."""
    bs = model.config.block_size
    seq = torch.tensor(ids[-bs - 1:], device=device)[None, :]  # predictions for the last <= bs tokens
    with ctx, torch.no_grad():
        logp, entropy, mi = model.predictive(model.hidden(seq[:, :-1]))
    p = logp[0].gather(-1, seq[0, 1:, None]).exp().squeeze(-1)
    first = max(n_prompt, len(ids) - (seq.size(1) - 1))
    print(f"{'token':>14} {'p':>7} {'entropy':>8} {'MI':>7}")
    for j in range(first, len(ids)):
        k = j - (len(ids) - (seq.size(1) - 1))
        print(f"{tok.decode([ids[j]])!r:>14} {p[k]:7.3f} {entropy[0, k]:8.3f} {mi[0, k]:7.3f}")


if __name__ == "__main__":
    main_guard(main)
