"""
Weights in and out: ckpt.pt (save, load, build a model from it, start from another run's weights, resume
exactly) and OpenAI's GPT-2 weights through HuggingFace transformers (import and export).

    python checkpoint.py export out-shakespeare-char hf-model   # a softmax checkpoint as a GPT2LMHeadModel folder

A checkpoint is a dict of plain tensors and values, so torch.load(weights_only=True) reads it and loading one
from a stranger cannot run code. It is self-contained: the model config, the training config and the tokenizer
spec travel with the weights, and sample.py and evaluate.py need nothing else.

Exact resume. A run continued from its checkpoint makes the same updates as one that never stopped (on a CPU,
bit for bit; CUDA kernels that add with atomics make it close, not exact). That takes the weights, the
optimizer's moments and the fp16 loss scale; the iteration, which sets the learning rate; the batch
generator's state, which sets the next windows; every rank's dropout RNG; and the best val loss and elapsed
time, which the logs continue. The MLM masks need no state (each batch's come from its own seed, data.mask_seed),
and evaluation draws from a forked RNG, so neither moves the training streams.
"""

import os
import pickle
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, replace

import torch
import torch.distributed as dist

from common import UserError, atomic_write, fault_point, main_guard
from model import GPT, GPTConfig
from tokenizer import from_spec

PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's, on the HuggingFace hub


def save_checkpoint(path, ckpt):
    """Written atomically, its folder made if need be: a crash mid-write leaves the previous checkpoint intact,
    and so does a full disk or a read-only folder, which end the run with a message instead."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with atomic_write(path) as f:
            torch.save(ckpt, f)
            fault_point("checkpoint")  # tests/test_faults.py kills the process here, mid-write
    except OSError as e:
        raise UserError(f"cannot write the checkpoint {path} ({e.strerror or e}); the previous one, if any, is "
                        f"untouched: free some space or choose another out_dir, then resume") from None


def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True: tensors and plain values only, so a checkpoint cannot run code."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}; train one first (python train.py config/...)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only met something that is not a tensor or a plain value
        what = re.search(r"Unsupported global: GLOBAL [\w.]+", str(e))
        raise UserError(f"{path} is not a readable checkpoint: it holds Python objects beyond tensors and plain "
                        f"values ({what.group(0) if what else 'UnpicklingError'}), and loading those could run "
                        f"code; refused") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"{path} is not a readable checkpoint: truncated, or not a torch file "
                        f"({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or not {"model", "model_config", "tokenizer"} <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this project (no model/model_config/tokenizer)")
    check_fields(ckpt, path)
    return ckpt


def check_fields(ckpt, path):
    """Refuse, in one line naming the field, a checkpoint whose common fields are of the wrong type (hand-edited,
    or not written by this code): the weights, the model's settings (each of its GPTConfig type), the tokenizer
    spec, the training settings (plain values), the iteration."""
    def refuse(field, want, got):
        raise UserError(f"{path}: {field} must be {want}, got {got!r:.60}")

    if not isinstance(ckpt["model"], dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in ckpt["model"].items()):
        refuse("model", "a dict of tensors (a state_dict)", type(ckpt["model"]).__name__)
    if not isinstance(ckpt["model_config"], dict):
        refuse("model_config", "a dict", type(ckpt["model_config"]).__name__)
    defaults = asdict(GPTConfig())
    for k, v in ckpt["model_config"].items():
        want = type(defaults.get(k))
        if k not in defaults or not (type(v) is want or want is float and type(v) is int):
            refuse(f"model_config[{k!r}]", f"of type {want.__name__}" if k in defaults else "a known setting", v)
    if not isinstance(ckpt["tokenizer"], dict):
        refuse("tokenizer", "a dict (a tokenizer spec)", type(ckpt["tokenizer"]).__name__)
    config = ckpt.get("config", {})
    if not isinstance(config, dict) or not all(isinstance(v, (str, int, float, type(None))) for v in config.values()):
        refuse("config", "a dict of plain values (the training settings)", config)
    if "iter_num" in ckpt and (type(ckpt["iter_num"]) is not int or ckpt["iter_num"] < 0):
        refuse("iter_num", "an integer >= 0", ckpt["iter_num"])


def build_model(ckpt, where):
    """The model a checkpoint describes, with its weights, or a clear error if this code cannot hold it."""
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        return model
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise UserError(f"the checkpoint in {where} does not fit this code ({type(e).__name__}: "
                        f"{str(e)[:200]})") from None


def load_model(init_from, out_dir, device="cpu"):
    """(model, tokenizer spec) for a script that uses a trained model: out_dir/ckpt.pt (init_from='resume'), or
    GPT-2's weights (a hub name or a HuggingFace folder) with GPT-2's tokenizer."""
    if init_from == "resume":
        ckpt = load_checkpoint(f"{out_dir}/ckpt.pt", device)
        return build_model(ckpt, out_dir), ckpt["tokenizer"]
    if not (init_from in PRETRAINED or os.path.isdir(init_from)):
        raise UserError(f"init_from must be 'resume', {', '.join(PRETRAINED)} or a HuggingFace GPT-2 folder, "
                        f"not {init_from!r}")
    try:
        model = from_pretrained(init_from)
    except (ImportError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    if model.config.vocab_size != 50257:
        raise UserError(f"{init_from} has {model.config.vocab_size} tokens, not GPT-2's 50,257, and no "
                        f"tokenizer comes with it; for a model trained here use its checkpoint (--out_dir)")
    return model, {"kind": "tiktoken", "name": "gpt2", "special_tokens": []}


def saved_config(ckpt):
    """The checkpoint's model config with every setting; one older than a switch has that switch's default."""
    return {**asdict(GPTConfig()), **ckpt["model_config"]}


def fine_tune_from(model, src, spec):
    """Start `model` from another checkpoint's weights: a new run (fresh optimizer, iteration 0), possibly with
    another head. Weights the two heads share carry over (the tied wte/lm_head matrix is the bayes head's mean);
    a head's own parameters that the source lacks keep their init (the sigmoid bias at -log(V-1), the bayes
    sigma at bayes_init_std). spec: this run's tokenizer, which must be the source's."""
    mine, theirs = asdict(model.config), saved_config(src)
    for k in ("causal", "block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias", "norm", "mlp",
              "mlp_multiple", "pos"):
        if theirs[k] != mine[k]:
            raise UserError(f"cannot fine-tune from that checkpoint: it has {k}={theirs[k]!r}, "
                            f"this config {mine[k]!r}")
    if src["tokenizer"] != spec:
        raise UserError("cannot fine-tune from that checkpoint: its tokenizer is not this data's tokenizer")
    own = model.state_dict()
    try:
        weights = fit_vocab({k: v for k, v in src["model"].items() if k in own}, own, model.config.vocab_size)
        missing, _ = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape than its settings say
        raise UserError(f"cannot fine-tune from that checkpoint: its weights do not fit its settings "
                        f"({str(e).strip().splitlines()[-1][:160]})") from None
    dropped = sorted(set(src["model"]) - set(own))
    print(f"fine-tuning from a {src['model_config'].get('head', GPTConfig.head)} checkpoint"
          + (f"; fresh: {', '.join(missing)}" if missing else "")
          + (f"; dropped: {', '.join(dropped)}" if dropped else ""))


VOCAB_ROWS = ("transformer.wte.weight", "lm_head.weight")  # padded to vocab_multiple rows (GPTConfig)


def fit_vocab(weights, own, V):
    """weights (a state dict) with the embedding/output matrix cut or padded to the rows `own` has: the V real
    rows are the weights', any padding rows own's (the vocab_multiple of the run and the source may differ)."""
    for k in VOCAB_ROWS:
        if k in weights and k in own and weights[k].shape != own[k].shape:
            weights[k] = torch.cat([weights[k][:V].to(own[k].device), own[k][V:]])
    return weights


# --- the resume state (see the top of this file) --------------------------------------------------------------

@dataclass
class Progress:
    iter_num: int = 0
    best_val_loss: float = float("inf")
    elapsed: float = 0.0  # seconds of training before this process: time_s counts across resumes


def dropout_rng(world, device):
    """Every rank's dropout RNG states [(torch, cuda or None)] (under torchrun a collective: all ranks call it)."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.startswith("cuda") else None)
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def rng_state(gen, states):
    """The batch generator's state and every rank's dropout RNG (dropout_rng), as a checkpoint holds them."""
    return {"batch": gen.get_state(), "torch": [s[0].cpu() for s in states],
            "cuda": [None if s[1] is None else s[1].cpu() for s in states]}


def training_state(model, optimizers, scaler, progress, rng):
    """What a checkpoint holds for an exact resume (rng: rng_state); train.py adds the configs and tokenizer.
    One optimizer's state as it is (AdamW's, as checkpoints always held it), several as {"optimizers": [...]}."""
    states = [o.state_dict() for o in optimizers]
    opt = states[0] if len(states) == 1 else {"optimizers": states}
    return {"model": model.state_dict(), "optimizer": opt, "scaler": scaler.state_dict(),
            "model_config": asdict(model.config), "iter_num": progress.iter_num,
            "best_val_loss": progress.best_val_loss, "elapsed": progress.elapsed, "rng": rng, "version": 1}


# what resuming reads beyond check_fields' (model, model_config, tokenizer: checked by load_checkpoint)
RESUME_FIELDS = {"optimizer": dict, "scaler": dict, "iter_num": int, "best_val_loss": (int, float),
                 "elapsed": (int, float), "rng": dict}


def check_resume_fields(ckpt, path):
    """Refuse, in one line naming the field, a checkpoint whose training state is missing or of the wrong type
    (hand-edited, truncated, or not written by train.py): each field restore() reads, beyond check_fields'."""
    def refuse(field, want, got):
        raise UserError(f"{path} cannot be resumed: {field} must be {want}, got {got!r:.60}")

    def is_state(t):
        return isinstance(t, torch.Tensor) and t.dtype == torch.uint8

    for key, kind in RESUME_FIELDS.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            refuse(key, f"a {' or '.join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))}",
                   type(ckpt.get(key)).__name__)
    if ckpt["elapsed"] < 0:
        refuse("elapsed", ">= 0", ckpt["elapsed"])
    if not is_state(ckpt["rng"].get("batch")):
        refuse("rng['batch']", "a ByteTensor (the batch generator's state)", type(ckpt["rng"].get("batch")).__name__)
    for key in ("torch", "cuda"):
        states = ckpt["rng"].get(key, ())
        states = states if isinstance(states, (list, tuple)) else [states]  # before DDP: one state
        n = torch.get_rng_state().numel() if key == "torch" else None  # a CPU generator's state has one size
        if not states or not all(is_state(t) and t.numel() == (n or t.numel()) or key == "cuda" and t is None
                                 for t in states):
            refuse(f"rng[{key!r}]", "a list of ByteTensors (one RNG state per process)", states)


def check_resumable(ckpt, mconf, optimizer, out_dir):
    """Refuse to resume a checkpoint whose model differs from the config's in any setting, or whose optimizer
    state is another optimizer's; returns mconf with the checkpoint's vocab_multiple (its matrices' shape, which
    the device chose: a run started on a CPU keeps its unpadded vocabulary on a GPU)."""
    check_resume_fields(ckpt, f"{out_dir}/ckpt.pt")
    mconf = replace(mconf, vocab_multiple=saved_config(ckpt)["vocab_multiple"])
    for k, v in saved_config(ckpt).items():
        if getattr(mconf, k) != v:
            raise UserError(f"cannot resume: the checkpoint has {k}={v!r} but this config says "
                            f"{getattr(mconf, k)!r}")
    was = ckpt.get("config", {}).get("optimizer", "adamw")  # checkpoints before the setting: AdamW
    if was != optimizer:
        raise UserError(f"cannot resume: the checkpoint was trained with optimizer={was!r}, this config says "
                        f"{optimizer!r}; to switch, start a new run from its weights: --init_from={out_dir}/ckpt.pt "
                        f"and another out_dir")
    return mconf


def restore(ckpt, model, optimizers, scaler, gen, path="ckpt.pt"):
    """Load the training state into the model, optimizers, GradScaler and batch generator; return its Progress.
    A part that does not fit (a tensor of another shape, a state of another optimizer) is refused by name."""
    def load(field, fn):
        try:
            fn()
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise UserError(f"{path} cannot be resumed: its {field} does not fit this run ({type(e).__name__}: "
                            f"{first})") from None
    load("model", lambda: model.load_state_dict(ckpt["model"]))
    load("optimizer", lambda: load_optimizer(optimizers, ckpt["optimizer"]))
    if ckpt["scaler"] or not scaler.is_enabled():  # a bf16 or fp32 run resumed in float16: a fresh loss scale
        load("scaler", lambda: scaler.load_state_dict(ckpt["scaler"]))
    # RNG states are CPU tensors, whatever map_location did
    load("rng", lambda: gen.set_state(ckpt["rng"]["batch"].cpu()))
    return Progress(ckpt["iter_num"], ckpt["best_val_loss"], ckpt["elapsed"])


RUN_FLAGS = ("fused", "foreach", "capturable", "lr_scale")  # how this run steps, not what was learned


def load_optimizer(optimizers, state):
    """Each optimizer's load_state_dict (state: training_state's), keeping this run's RUN_FLAGS in every parameter
    group: a run started on a CPU and resumed on a GPU steps fused, and Muon's lr_scale is this run's muon_lr.
    The flags go in before loading, which places the state where they need it."""
    states = state["optimizers"] if "optimizers" in state else [state]
    if len(states) != len(optimizers):
        raise ValueError(f"{len(states)} optimizer states for {len(optimizers)} optimizers")
    for o, s in zip(optimizers, states):
        load_one(o, s)


def load_one(optimizer, state):
    groups = [g | {k: mine[k] for k in RUN_FLAGS if k in mine} for g, mine in zip(state["param_groups"],
                                                                                 optimizer.param_groups)]
    optimizer.load_state_dict(state | {"param_groups": groups})
    for p, st in optimizer.state.items():  # load_state_dict checks no shapes: the first step would fail
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() and v.shape != p.shape:
                raise ValueError(f"a state {k!r} of shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}")


def restore_dropout_rng(rng, rank, world, device):
    """This rank's dropout RNG where it left off, if the checkpoint was written by as many processes; returns
    whether it could (older checkpoints hold one state, not a list)."""
    torch_states = rng["torch"] if isinstance(rng["torch"], list) else [rng["torch"]]
    cuda_states = rng["cuda"] if isinstance(rng["cuda"], list) else [rng["cuda"]]
    if len(torch_states) != world:
        return False
    try:
        torch.set_rng_state(torch_states[rank].cpu())
        if device.startswith("cuda") and cuda_states[rank] is not None:
            torch.cuda.set_rng_state(cuda_states[rank].cpu(), device)
    except (RuntimeError, IndexError) as e:  # a state of the wrong size
        raise UserError(f"the checkpoint cannot be resumed: a dropout RNG state in it is not a generator's "
                        f"state ({e})") from None
    return True


# --- GPT-2 weights in and out (HuggingFace transformers, imported only when used) ---------------------------
# The parameter names are GPT-2's, so the conversion is one rule: HuggingFace stores the four projection
# matrices as Conv1D weights of shape (in, out), nn.Linear as (out, in); those get transposed, the rest is
# copied as is. lm_head is tied to wte in both.

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf_gpt2(name):
    """transformers' GPT2LMHeadModel for a hub name or local folder, checked to be a plain GPT-2."""
    try:
        from transformers import GPT2LMHeadModel  # optional: only GPT-2's weights need it
    except ImportError:
        raise ImportError("GPT-2 weights need the transformers package: pip install transformers") from None
    try:
        hf = GPT2LMHeadModel.from_pretrained(name)
    except OSError as e:  # what transformers raises for "not found", offline included
        raise OSError(f"could not load GPT-2 weights {name!r}: {str(e).splitlines()[0][:300]}. Offline? Download "
                      f"once with internet (it is cached in ~/.cache/huggingface), then set HF_HUB_OFFLINE=1; "
                      f"or pass a local folder written by save_pretrained") from None
    c = hf.config
    plain = (c.activation_function in ("gelu_new", "gelu_pytorch_tanh") and c.n_inner in (None, 4 * c.n_embd)
             and c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx and c.layer_norm_epsilon == 1e-5
             and c.tie_word_embeddings)
    if not plain:
        raise ValueError(f"{name} is a GPT-2 variant this model does not implement (activation "
                         f"{c.activation_function}, n_inner {c.n_inner}, layer_norm_epsilon {c.layer_norm_epsilon}, tied output "
                         f"weights {c.tie_word_embeddings})")
    return hf.float()


def from_pretrained(name, **overrides):
    """GPT-2 from the HuggingFace hub ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or from a local folder
    written by save_pretrained. overrides: settings that leave the weights' shapes alone: dropout, the head
    (sigmoid and bayes start from the pretrained matrix, their own parameters at their init) and block_size (at
    most the model's 1,024: the position embeddings are cut to it)."""
    allowed = {"block_size", "dropout", "head", "bayes_prior_std", "bayes_init_std", "bayes_samples",
               "vocab_multiple"}
    if set(overrides) - allowed:
        raise ValueError(f"from_pretrained can only change {', '.join(sorted(allowed))}, "
                         f"not {', '.join(sorted(set(overrides) - allowed))}")
    hf = load_hf_gpt2(name)
    c = hf.config
    block_size = overrides.pop("block_size", c.n_positions)
    if block_size > c.n_positions:
        raise ValueError(f"block_size {block_size} is longer than {name}'s {c.n_positions} positions")
    model = GPT(GPTConfig(block_size=block_size, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                          n_embd=c.n_embd, bias=True, **overrides))
    sd = {k: v.t() if k.endswith(CONV1D) else v for k, v in hf.state_dict().items()
          if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # causal-mask buffers of older versions
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][:block_size]
    missing, unexpected = model.load_state_dict(fit_vocab(sd, model.state_dict(), c.vocab_size), strict=False)
    if unexpected or set(missing) - set(model.head_params):
        raise ValueError(f"{name} does not fit GPT-2's layout (missing {missing}, unexpected {unexpected})")
    return model


def from_gpt2(name, mconf, spec):
    """A model holding OpenAI's GPT-2 weights (init_from='gpt2', ... or a HuggingFace folder) with the training
    config's head, dropout and block_size. The config must state the pretrained shape (n_layer, n_head,
    n_embd): resuming this run is checked against it, so the config file says what model it trains."""
    kw = {k: getattr(mconf, k) for k in ("block_size", "dropout", "head", "bayes_prior_std", "bayes_init_std",
                                         "bayes_samples", "vocab_multiple")}
    try:
        model = from_pretrained(name, **kw)
    except (ImportError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    diff = [k for k, v in asdict(model.config).items() if getattr(mconf, k) != v]
    if diff:
        raise UserError(f"init_from={name} has " + ", ".join(f"{k}={getattr(model.config, k)!r}" for k in diff)
                        + "; the config says " + ", ".join(f"{k}={getattr(mconf, k)!r}" for k in diff)
                        + (": set the same in the config" if "vocab_size" not in diff else
                           " (vocab_size is the data's: prepare it with --tokenizer gpt2)"))
    if name in PRETRAINED and (spec.get("kind"), spec.get("name")) != ("tiktoken", "gpt2"):
        raise UserError(f"{name} reads GPT-2's tokens; this data has a {spec.get('kind')} tokenizer: "
                        f"prepare it with --tokenizer gpt2")
    print(f"starting from {name}'s weights")
    return model


def hf_tokenizer(enc):
    """A tiktoken.Encoding (tokenizer.py's byte-level BPEs give theirs) as a HuggingFace fast tokenizer with
    the same ids, so that tools built on transformers (lm-evaluation-harness) read text as the model does.
    tiktoken keeps a rank per token; HuggingFace's BPE wants the merges that build them: every split of a token
    into two tokens, ranked by the token it makes, which is also tiktoken's rule (join the pair whose result
    has the lowest rank). Token bytes are written in GPT-2's printable stand-ins for bytes (bytes_to_unicode)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks, shown = enc._mergeable_ranks, bytes_to_unicode()
    text = lambda b: "".join(shown[x] for x in b)  # noqa: E731
    merges = [(text(t[:i]), text(t[i:])) for t, _ in sorted(ranks.items(), key=lambda kv: kv[1])
              for i in range(1, len(t)) if t[:i] in ranks and t[i:] in ranks]
    vocab = {text(t): r for t, r in ranks.items()} | dict(enc._special_tokens)
    # ignore_merges: a chunk that is one token is that token, as in tiktoken, whatever the merges would do
    tk = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    specials = sorted(enc._special_tokens, key=enc._special_tokens.get)
    tk.add_special_tokens(specials)
    eot = "<|endoftext|>" if "<|endoftext|>" in specials else None
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=eot, eos_token=eot)


def export_hf(model, folder, eos_token_id=None, tok=None):
    """Write a model as a HuggingFace GPT2LMHeadModel folder (config.json + model.safetensors), which
    `transformers.GPT2LMHeadModel.from_pretrained(folder)` and everything built on it can load. Only what
    GPT-2's architecture can express: the softmax head (bias=False exports as zero biases, which is the same
    function). tok (tokenizer.py's): a byte-level BPE is written beside it as a HuggingFace tokenizer
    (hf_tokenizer), so `AutoTokenizer.from_pretrained(folder)` and lm-evaluation-harness work on the folder;
    a character vocabulary has no HuggingFace form that reads any text, so it is left out. Returns whether a
    tokenizer was written. The folder must not exist or be empty; it appears complete or not at all."""
    c = model.config
    if not model.head.gpt2:
        raise ValueError(f"only the softmax head exists in GPT-2; this model's head is {c.head!r}")
    if (c.norm, c.mlp, c.pos) != ("layernorm", "gelu", "learned"):
        raise ValueError(f"GPT-2 has LayerNorm, a GELU MLP and learned positions; this model has norm={c.norm}, "
                         f"mlp={c.mlp}, pos={c.pos}")
    if not c.causal:
        raise ValueError("GPT-2 is causal; this model is bidirectional (a masked language model)")
    if os.path.isdir(folder) and os.listdir(folder) or os.path.isfile(folder):
        raise ValueError(f"{folder} exists and is not empty: choose a new folder")
    from transformers import GPT2Config, GPT2LMHeadModel
    hf_tok = hf_tokenizer(tok.to_tiktoken()) if hasattr(tok, "to_tiktoken") else None
    if tok is not None and eos_token_id is None:
        eos_token_id = tok.eot_token
    hc = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                    n_head=c.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                    resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                    tie_word_embeddings=True, bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    hf = GPT2LMHeadModel(hc)
    ours = model.state_dict()
    ours.update({k: ours[k][:c.vocab_size] for k in VOCAB_ROWS})  # without the padding rows (vocab_multiple)
    sd = {k: (ours[k].t() if k.endswith(CONV1D) else ours[k]) if k in ours else torch.zeros_like(v)
          for k, v in hf.state_dict().items()}  # absent keys: biases of a bias=False model
    hf.load_state_dict({k: v.detach().float().cpu().contiguous() for k, v in sd.items()}, strict=True)
    # a folder, not a file: the same idea as atomic_write, a temporary folder renamed into place
    tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(os.path.abspath(folder)))
    try:
        hf.save_pretrained(tmp, safe_serialization=True)
        if hf_tok is not None:
            hf_tok.model_max_length = c.block_size  # what lm-eval and pipelines truncate to
            hf_tok.save_pretrained(tmp)
        if os.path.isdir(folder):
            os.rmdir(folder)  # empty (checked above)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return hf_tok is not None


def main(argv=None):
    """python checkpoint.py export OUT_DIR FOLDER: a checkpoint as a HuggingFace GPT-2 folder (export_hf)."""
    import argparse
    p = argparse.ArgumentParser(description="Export a softmax-head checkpoint as a HuggingFace GPT-2 model folder "
                                "(config.json + model.safetensors) for transformers.")
    p.add_argument("command", choices=["export"])
    p.add_argument("out_dir", help="the run's folder holding ckpt.pt, or a ckpt.pt file")
    p.add_argument("folder", help="where the model goes: a new or empty folder")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    path = args.out_dir if os.path.isfile(args.out_dir) else os.path.join(args.out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, args.out_dir)
    try:
        tok, why = from_spec(ckpt["tokenizer"]), "a character vocabulary has no HuggingFace form"
    except (OSError, ValueError, TypeError) as e:  # e.g. tiktoken's vocabulary, offline
        tok, why = None, f"the checkpoint's tokenizer could not be loaded: {e}"
    try:
        with_tok = export_hf(model, args.folder, tok=tok)
    except (ImportError, ValueError, OSError) as e:
        raise UserError(f"cannot export: {e}") from None
    print(f"wrote {args.folder}: load it with transformers.GPT2LMHeadModel.from_pretrained({args.folder!r})")
    if with_tok:
        print(f"and its tokenizer with AutoTokenizer.from_pretrained({args.folder!r}); lm-evaluation-harness: "
              f"lm_eval --model hf --model_args pretrained={args.folder} --tasks hellaswag")
    else:
        print(f"without a tokenizer ({why})", file=sys.stderr)


if __name__ == "__main__":
    main_guard(main)
