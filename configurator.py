"""
Settings for every script: a dataclass of defaults, a config file of plain Python assignments, then
command-line overrides, in that order.

    python train.py config/shakespeare_char.py --batch_size=32 --max_iters 2000

A config file is Python and is run as such: only run config files you trust (they are the one place where
this project executes code it reads). Values on the command line are parsed as Python literals
(`--top_p 0.9`, `--top_k None`, `--start "'hello'"`); anything that is not a literal is taken as a string
(`--device cpu`). A value must have the type of its default (an int where a float is fine), a setting with
choices (Literal) one of them, and an unknown key is an error naming the closest valid keys, so a typo never
silently trains the wrong model.

A config file can build on another with `include("other.py")` (the path relative to the including file's
folder): the other file runs right there, so its assignments become this file's and later lines override them.

`-h`/`--help` prints every setting with its type, its value as the arguments before it left it, and the comment
beside it in the dataclass (common.usage), then exits.
"""

import ast
import difflib
import os
import sys
import types
import typing

from common import UserError, hint_types, usage

HELP = ("-h", "--help")


def check_value(key, value, hint):
    """Return `value` converted to the field's type, or raise UserError naming the key. A setting typed
    Literal['a', 'b'] takes one of those values: every setting with choices is checked here."""
    if typing.get_origin(hint) is typing.Literal:
        if value in typing.get_args(hint) and isinstance(value, str):
            return value
        *rest, last = typing.get_args(hint)
        raise UserError(f"unknown {key} {value!r}; choose {', '.join(rest)} or {last}" if rest else
                        f"{key} can only be {last!r}")
    allowed = hint_types(hint)
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
        text_ok = str in hint_types(hints[key]) or typing.get_origin(hints[key]) is typing.Literal
        if text_ok and not isinstance(value, str) and value is not None:
            value = text  # `--start 123` is the string '123' when the setting is a string
        put(key, value, "the command line")
    return cls(**values)
