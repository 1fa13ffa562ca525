"""-h/--help: every script answers it, and the settings it lists are the dataclass's, with the comments beside
them in the source as their help text."""
import dataclasses
import inspect
import os
import re
import sys
import typing
from dataclasses import dataclass

import pytest

from conftest import ROOT, run_script
import common
import model
from configurator import configure


def entries(text):
    """{name: (type, value, mark, comment)} of each `  --name: type = value  (set by ...)` line of a help text,
    the comment being the indented lines under it, joined; and {heading: settings listed before it}."""
    out, heads, last = {}, {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"  --(\w+): (.+?) = (.*?)(?:  (\(set by .*\)))?$", line)
        if m:
            last = m.group(1)
            out[last] = [m.group(2), m.group(3), m.group(4) or "", ""]
        elif line.startswith(" " * 6) and last:
            out[last][3] = (out[last][3] + " " + line.strip()).strip()
        else:
            last = None
            if line and i + 1 < len(lines) and lines[i + 1].startswith("  --"):  # a heading over settings
                heads[line] = len(out)
    return {k: tuple(v) for k, v in out.items()}, heads


def type_name(hint):
    if typing.get_origin(hint) is typing.Literal:  # the choices
        return " | ".join(map(repr, typing.get_args(hint)))
    return str(hint) if isinstance(hint, type(int | None)) else hint.__name__


def source_comment(cls, name):
    """The comment on field `name`'s line in cls's own source (the one-line cases)."""
    return re.search(rf"^\s+{name}: .*?  # (.*)$", inspect.getsource(cls), re.M).group(1)


def configs():
    import bench
    import evaluate
    import hellaswag
    import sample
    import train
    return [train.TrainConfig, sample.SampleConfig, evaluate.EvalConfig, hellaswag.HellaSwagConfig, bench.BenchConfig]


def help_of(cls, argv, capsys):
    with pytest.raises(SystemExit) as e:
        configure(cls, argv)
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script,flag", [("train.py", "--help"), ("sample.py", "-h"), ("evaluate.py", "-h"),
                                         ("hellaswag.py", "-h"), ("bench.py", "--help")])
def test_every_configured_script_answers_help(script, flag):
    r = run_script(script, flag)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"usage: python {script} [config.py ...] [--key=value ...]"
    doc = open(os.path.join(ROOT, script)).read().split('"""')[1].strip().split("\n\n")[0]
    assert " ".join(doc.split()) in " ".join(r.stdout.split())  # the script's purpose, its docstring's start
    assert "--out_dir: str = " in r.stdout and max(map(len, lines)) <= 100


@pytest.mark.parametrize("script,flag,says", [
    ("prepare_data.py", "-h", ["Turn text into the token files", "--tokenizer", "--data_files",
                               "examples:", "python prepare_data.py shakespeare_char"]),
    ("tokenizer.py", "--help", ["Train a byte-level BPE tokenizer", "train", "encode", "examples:",
                                "python tokenizer.py train --input input.txt"])])
def test_the_argparse_scripts_answer_help_with_examples(script, flag, says):
    r = run_script(script, flag)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: {script}") and all(s in r.stdout for s in says)


@pytest.mark.parametrize("cls", configs(), ids=lambda c: c.__name__)
def test_help_lists_every_field_with_its_type_and_comment(cls, capsys):
    listed, _ = entries(help_of(cls, ["-h"], capsys))
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    assert list(listed) == [f.name for f in fields]
    for f in fields:
        assert listed[f.name][:2] == (type_name(hints[f.name]), repr(f.default)), f.name
    for klass in cls.__mro__:  # a comment on every field line of the source (parents' too) is its help
        if "__dataclass_fields__" in vars(klass):
            for name in vars(klass)["__annotations__"]:
                m = re.search(rf"^\s+{name}: .*?  # (.*)$", inspect.getsource(klass), re.M)
                if m:
                    assert listed[name][3].startswith(" ".join(m.group(1).split())), name


def test_the_comments_groups_and_continuations_of_the_real_configs(capsys):
    train, _, evaluate, _, bench = configs()
    listed, heads = entries(help_of(train, ["--help"], capsys))
    assert listed["init_from"][3] == source_comment(train, "init_from")
    assert listed["always_save_checkpoint"][3] == "False: checkpoint only when val loss improves"  # not "... data"
    assert listed["grad_clip"][3] == "clip the gradient's global norm to this (0: off)"
    assert listed["log_interval"][3] == ""
    assert listed["mlm_random"][3].startswith("... a random token")
    names = list(listed)
    # data.DataConfig's fields come first (TrainConfig extends it), then model.ModelSettings', then train.py's
    assert heads["data"] == 0 == names.index("dataset") and heads["I/O"] == names.index("out_dir")
    assert heads["model"] == names.index("n_layer") < heads["output head"] == names.index("head") < heads["I/O"]
    assert heads["optimizer"] == names.index("optimizer")
    assert heads["learning rate schedule: linear warmup, then cosine decay to min_lr at lr_decay_iters"] == \
        names.index("decay_lr")
    listed, _ = entries(help_of(evaluate, ["--help"], capsys))
    assert listed["set_k"][3] == (source_comment(evaluate, "set_k") +
                                  " if it trained with sigmoid_targets='ngram', else off; 0: off")
    assert listed["shift"][3] == source_comment(evaluate, "shift")  # the continuation above it is set_k's
    listed, heads = entries(help_of(bench, ["--help"], capsys))
    assert listed["n_layer"][3] == "" and listed["norm"][3] == source_comment(model.ModelSettings, "norm")  # a base's
    assert listed["what"][3] == source_comment(bench, "what") and heads["BenchConfig"] == list(listed).index("what")


@dataclass
class Cfg:
    # I/O
    out_dir: str = "out"  # where it all goes; a long comment that runs past the hundredth column, so that it
    # has to be wrapped onto the next line when --help prints it
    compile: bool = False
    # model
    n_layer: int = 12  # blocks
    top_p: float | None = None


def test_help_shows_what_the_arguments_before_it_set(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = "c.py"
    (tmp_path / f).write_text("n_layer = 3\n")
    listed, heads = entries(help_of(Cfg, [f, "--out_dir=runs", "--compile", "-h", "--n_layer=bad"], capsys))
    assert listed["n_layer"] == ("int", "3", "(set by c.py; default 12)", "blocks")
    assert listed["out_dir"][1:3] == ("'runs'", "(set by the command line; default 'out')")
    assert listed["compile"][1] == "True" and listed["top_p"] == ("float | None", "None", "", "")
    assert listed["out_dir"][3].endswith("wrapped onto the next line when --help prints it")
    assert list(heads)[-2:] == ["I/O", "model"]
    text = help_of(Cfg, ["--help", f], capsys)  # after --help: not read
    assert entries(text)[0]["n_layer"][1:3] == ("12", "")
    assert max(len(line) for line in text.splitlines()) <= 100
    script = os.path.basename(sys.argv[0])
    assert common.usage(Cfg).splitlines()[0] == f"usage: python {script} [config.py ...] [--key=value ...]"


def test_train_help_after_a_config_file_shows_its_values_and_trains_nothing(tmp_path):
    cfg = os.path.join(ROOT, "config", "shakespeare_char.py")
    r = run_script(os.path.join(ROOT, "train.py"), cfg, "--max_iters=7", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    listed, _ = entries(r.stdout)
    n_layer = listed["n_layer"]  # the mark goes under the line when the path is too long for it
    assert n_layer[1] == "3" and (n_layer[2] or n_layer[3]).startswith(f"(set by {cfg}; default 12)")
    assert listed["out_dir"][1] == "'out-shakespeare-char'" and listed["max_iters"][1] == "7"
    assert os.listdir(tmp_path) == []  # no out_dir, nothing written, no data looked for


def test_evaluate_compare_answers_help_too(tmp_path):
    r = run_script(os.path.join(ROOT, "evaluate.py"), "--compare", "--help", cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.startswith("usage: python evaluate.py --compare OUT_DIR")
    assert not os.listdir(tmp_path)  # no plots of nothing
