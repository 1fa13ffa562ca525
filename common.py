"""
What every script shares, besides its settings: a user's mistake printed as one line (UserError, main_guard),
files written whole or not at all (atomic_write), Ctrl-C that saves first (catch_signals), a pause for the
fault tests (fault_point), and the --help text, made from the comments in a settings dataclass (usage).
configurator.py, the first lesson, uses these; nothing here needs reading before the rest of the course.
"""

import ast
import contextlib
import dataclasses
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

WIDTH = 100  # columns of the --help text


class UserError(Exception):
    """Bad input from the user: printed as one line, without a traceback, and the script exits non-zero."""


def main_guard(main):
    """Run a script's main(): user errors become `error: ...` on stderr and exit code 2, Ctrl-C exits 130, a
    closed output pipe exits 1 without a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`python sample.py | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exiting does not flush into the pipe
        sys.exit(1)


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


def hint_types(hint):
    """`int` -> (int,); `float | None` -> (float, NoneType); `Literal['a', 'b']` -> ('a', 'b')."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) in (typing.Union, typing.Literal):
        return typing.get_args(hint)
    return (hint,)


def _type_name(hint):
    if typing.get_origin(hint) is typing.Literal:
        return " | ".join(map(repr, typing.get_args(hint)))
    return " | ".join("None" if t is type(None) else getattr(t, "__name__", str(t)) for t in hint_types(hint))


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

