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
"""

import ast
import contextlib
import dataclasses
import difflib
import os
import sys
import time
import types
import typing


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


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """`with atomic_write(path) as f:` writes f to path.tmp; when the block ends without an error the file is
    flushed, fsynced and renamed onto path. So path holds the old file or the whole new one, never a part; on
    an error the temp file is removed (and the error goes on). Every file this project writes goes through here."""
    tmp = path + ".tmp"
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


def _check(key, value, hint):
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
    """Build a `cls` dataclass from its defaults, the config files and `--key=value`/`--key value` in argv."""
    argv = sys.argv[1:] if argv is None else list(argv)
    hints = typing.get_type_hints(cls)
    values = {}

    def put(key, value):
        if key not in hints:
            raise _unknown(key, list(hints))
        values[key] = _check(key, value, hints[key])

    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            for k, v in _read_file(arg).items():
                put(k, v)
            continue
        key, eq, text = arg[2:].partition("=")
        if key not in hints:
            raise _unknown(key, list(hints))
        if not eq:
            # `--key value`; a bare `--flag` means True for a boolean setting
            if i < len(argv) and not (hints[key] is bool and argv[i].startswith("--")):
                text = argv[i]
                i += 1
            elif hints[key] is bool:
                text = "True"
            else:
                raise UserError(f"--{key} needs a value")
        value = _parse(text)
        if str in _allowed_types(hints[key]) and not isinstance(value, str) and value is not None:
            value = text  # `--start 123` is the string '123' when the setting is a string
        put(key, value)
    return cls(**values)


def show(cfg):
    """The effective config, one `key = value` a line, as printed at the start of every run."""
    return "\n".join(f"{f.name} = {getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))

