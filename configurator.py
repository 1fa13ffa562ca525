"""
Settings for every script: a dataclass of defaults, a config file of plain Python assignments, then
command-line overrides, in that order.

    python train.py config/shakespeare_char.py --batch_size=32 --max_iters 2000

A config file is Python and is run as such: only run config files you trust (they are the one place where
this project executes code it reads). Values on the command line are parsed as Python literals
(`--top_p 0.9`, `--top_k None`, `--start "'hello'"`); anything that is not a literal is taken as a string
(`--device cpu`). A value must have the type of its default (an int where a float is expected is fine), and
an unknown key is an error naming the closest valid keys, so a typo never silently trains the wrong model.

A config file can build on another with `include("other.py")` (the path relative to the including file's
folder): the other file runs right there, so its assignments become this file's and later lines override them.

`-h`/`--help` prints every setting with its type, its value and its comment in the dataclass's source (the
comment beside a field is its help text, so there is one place to write it), then exits. Config files and
`--key=value` before it are applied first, so `python train.py config/x.py --help` shows config/x.py's values.
"""

import ast
import contextlib
import dataclasses
import difflib
import inspect
import io
import os
import signal
import sys
import textwrap
import time
import tokenize
import types
import typing

HELP = ("-h", "--help")
WIDTH = 100  # columns of the --help text


class UserError(Exception):
    """Bad input from the user: printed as one line, without a traceback, and the script exits non-zero."""


def main_guard(main):
    """Run a script's main(): user errors become `error: ...` on stderr and exit code 2, Ctrl-C exits 130."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def fault_point(name):
    """A test hook, not a feature: with NANOGPT_TEST_PAUSE=name in the environment the process says
    `paused at name` on stderr and sleeps, so that tests/test_faults.py can kill -9 it at exactly this place
    (mid checkpoint write, between prepare_data.py's renames). Unset, it costs one dictionary lookup."""
    if os.environ.get("NANOGPT_TEST_PAUSE") == name:
        print(f"paused at {name}", file=sys.stderr, flush=True)
        time.sleep(600)


def catch_signals(world):
    """Ctrl-C and SIGTERM only note the signal: the loop saves and stops at the next step, where all ranks agree
    (a handler that saved could catch an update half done). A second one stops a lone process at once (under
    torchrun, Ctrl-C reaches each worker twice). Returns (the dict it goes in, a function restoring handlers)."""
    got = {}

    def handler(signum, frame):
        if "signum" in got and world == 1:
            raise KeyboardInterrupt
        if "signum" not in got:
            got["signum"] = signum
            if world == 1:
                print(f"{signal.Signals(signum).name}: saving a checkpoint after this iteration, then stopping "
                      f"(again to stop at once)", file=sys.stderr, flush=True)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return got, lambda: [signal.signal(s, h) for s, h in old.items()]


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """`with atomic_write(path) as f:` writes f to path.tmp; when the block ends without an error the file is
    flushed, fsynced and renamed onto path. So path holds the old file or the whole new one, never a part; on
    an error the temp file is removed (and the error goes on). Every file this project writes goes through here."""
    tmp = f"{path}.tmp"  # path may be a str or a pathlib.Path
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _allowed_types(hint):
    """`int` -> (int,); `float | None` -> (float, NoneType)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def check_value(key, value, hint):
    """Return `value` converted to the field's type, or raise UserError naming the key."""
    allowed = _allowed_types(hint)
    for t in allowed:
        if t is type(None) and value is None:
            return None
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
    raise UserError(f"{key} must be {names}, got {value!r} ({type(value).__name__})")


def _unknown(key, valid):
    near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; valid keys: {', '.join(sorted(valid))}"
    return UserError(f"unknown config key '{key}'{hint}")


def _parse(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word like cpu or out-shakespeare-char is a string


def _read_file(path):
    """Run a config file and return the names it assigns (skipping modules and _private names)."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    ns = {}
    running = []  # the files being run, innermost last: include() finds names next to the innermost one

    def run(file):
        running.append(file)
        ns["__file__"] = file  # so an older config can still build on a sibling with exec(open(...))
        try:
            exec(compile(open(file).read(), file, "exec"), ns)
        except UserError:
            raise  # from an include() inside: it already names its file
        except Exception as e:
            raise UserError(f"config file {file} failed: {type(e).__name__}: {e}") from None
        finally:
            running.pop()
            if running:
                ns["__file__"] = running[-1]

    def include(name):
        """Run config file `name` (relative to this file's folder) here, in this file's namespace."""
        file = os.path.join(os.path.dirname(running[-1]), name)
        if not os.path.isfile(file):
            raise UserError(f"{running[-1]}: include({name!r}): config file not found: {file}")
        if os.path.realpath(file) in map(os.path.realpath, running):
            raise UserError(f"{running[-1]}: include({name!r}) includes a file that is including it")
        run(file)

    ns["include"] = include
    run(path)
    return {k: v for k, v in ns.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType) and v is not include}


def configure(cls, argv=None):
    """Build a `cls` dataclass from its defaults, the config files and `--key=value`/`--key value` in argv.
    -h/--help prints the settings as the arguments before it left them, and exits."""
    argv = sys.argv[1:] if argv is None else list(argv)
    hints = typing.get_type_hints(cls)
    values, origin = {}, {}  # origin: where each value came from, for --help

    def put(key, value, where):
        if key not in hints:
            raise _unknown(key, list(hints))
        values[key] = check_value(key, value, hints[key])
        origin[key] = where

    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in HELP:
            print(usage(cls, values, origin))
            raise SystemExit(0)
        if not arg.startswith("--"):
            for k, v in _read_file(arg).items():
                put(k, v, arg)
            continue
        key, eq, text = arg[2:].partition("=")
        if key not in hints:
            raise _unknown(key, list(hints))
        if not eq:
            # `--key value`; a bare `--flag` means True for a boolean setting
            flag_next = i < len(argv) and (argv[i].startswith("--") or argv[i] in HELP)
            if i < len(argv) and not (hints[key] is bool and flag_next):
                text = argv[i]
                i += 1
            elif hints[key] is bool:
                text = "True"
            else:
                raise UserError(f"--{key} needs a value")
        value = _parse(text)
        if str in _allowed_types(hints[key]) and not isinstance(value, str) and value is not None:
            value = text  # `--start 123` is the string '123' when the setting is a string
        put(key, value, "the command line")
    return cls(**values)


# --- --help: the dataclass's own comments are the help text ------------------------------------------------------

def _is_title(text):
    """A full-line comment that names a group of settings: `data`, `AdamW`, `learning rate schedule: ...`.
    Anything else (a sentence, a continued phrase) is the comment of a field."""
    head = text.split(":")[0]
    return bool(head) and len(head.split()) <= 4 and not text.startswith("...") and \
        not any(c in head for c in ",;=()'\"")


def _class_docs(klass):
    """{field: [group, comment]} read from klass's source. The comment beside a field is its help; a full-line
    comment that reads as a title starts a group; any other full-line comment continues the comment of the
    field just above it (if that one has a comment), else it belongs to the field below. (EvalConfig's set_k
    and TrainConfig's `# data` after always_save_checkpoint are the two cases this tells apart.)"""
    try:
        src = textwrap.dedent(inspect.getsource(klass))
        tree = ast.parse(src).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return {}  # no source (a class made at run time): the help shows types and defaults only
    comments = {}  # line -> (text, whether the comment is the whole line)
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type == tokenize.COMMENT:
            comments[t.start[0]] = (t.string.lstrip("#").strip(), not t.line[:t.start[1]].strip())
    spans = {s.lineno: (s.target.id, s.end_lineno) for s in tree.body
             if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    docs, group, above, below = {}, None, None, []
    n = tree.lineno + 1  # the line after `class ...:`
    while n <= len(src.splitlines()):
        if n in spans:
            name, last = spans[n]
            text = [comments[k][0] for k in range(n, last + 1) if k in comments]
            docs[name] = [group, below + text]
            above, below = (name if text else None), []
            n = last + 1
            continue
        if n in comments and comments[n][1]:
            text = comments[n][0]
            if below:  # a block of comment lines above a field
                below.append(text)
            elif _is_title(text):
                group, above = text, None
            elif above:  # right under a commented field: more of its comment
                docs[above][1].append(text)
            else:
                below = [text]
        else:  # a blank line or other code ends whatever the comments above were continuing
            above, below = None, []
        n += 1
    return docs


def _field_docs(cls):
    """{field: (group, comment)} over cls and its dataclass bases, a subclass's comment winning. A subclass's
    fields that come before any group comment are grouped under the subclass's name."""
    docs, first = {}, True
    for klass in reversed(cls.__mro__):
        if "__dataclass_fields__" not in vars(klass):
            continue
        for name, (group, text) in _class_docs(klass).items():
            docs[name] = (group or (None if first else klass.__name__), " ".join(text))
        first = False
    return docs


def _type_name(hint):
    return " | ".join("None" if t is type(None) else getattr(t, "__name__", str(t)) for t in _allowed_types(hint))


def usage(cls, values=None, origin=None):
    """The --help text: usage, the script's purpose (its docstring's first paragraph), then each setting with its
    type, value and comment, in the dataclass's groups. values/origin: what config files or the command line
    set (shown instead of the default, with where it came from)."""
    values, origin = values or {}, origin or {}
    script = os.path.basename(sys.argv[0]) or "script.py"
    out = [f"usage: python {script} [config.py ...] [--key=value ...]"]
    doc = inspect.cleandoc(getattr(sys.modules.get("__main__"), "__doc__", None) or "")
    if doc:
        out += ["", textwrap.fill(doc.split("\n\n")[0], WIDTH)]
    out += ["", textwrap.fill("Settings (--key: type = value). Config files (Python: `key = value` lines), "
                              "then --key=value or --key value, override the defaults, in the order given.",
                              WIDTH)]
    if origin:  # the arguments before --help
        out.append(textwrap.fill(f"Values as set by {', '.join(dict.fromkeys(origin.values()))}.", WIDTH))
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    group = ""  # not None: the first field starts a group even when it has no heading
    for f in dataclasses.fields(cls):
        g, text = docs.get(f.name, (None, ""))
        if g != group:
            out += ["", textwrap.fill(g, WIDTH)] if g else [""]
            group = g
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        line = f"  --{f.name}: {_type_name(hints[f.name])} = {values.get(f.name, default)!r}"
        if f.name in origin:
            mark = f"(set by {origin[f.name]}; default {default!r})"
            if len(line) + 2 + len(mark) <= WIDTH:
                line += "  " + mark
            else:
                text = f"{mark} {text}"
        out.append(line)
        if text:
            out += textwrap.wrap(text, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6,
                                 break_on_hyphens=False, break_long_words=False)  # keep gpt2-medium whole
    return "\n".join(out)


def show(cfg):
    """The effective config, one `key = value` a line, as printed at the start of every run."""
    return "\n".join(f"{f.name} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))

