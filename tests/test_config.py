from dataclasses import dataclass

import pytest

from conftest import run_script
from configurator import UserError, configure


@dataclass
class Cfg:
    out_dir: str = "out"
    batch_size: int = 12
    learning_rate: float = 6e-4
    compile: bool = False
    top_k: int | None = None
    top_p: float | None = None


def test_defaults_and_both_override_forms():
    cfg = configure(Cfg, ["--batch_size=32", "--learning_rate", "1e-3", "--out_dir", "runs/a"])
    assert (cfg.batch_size, cfg.learning_rate, cfg.out_dir) == (32, 1e-3, "runs/a")
    assert configure(Cfg, []) == Cfg()


def test_config_file_then_command_line(tmp_path):
    f = tmp_path / "c.py"
    f.write_text("import math\nbatch_size = 4 * 8  # arithmetic is fine\nlearning_rate = math.sqrt(1e-6)\n")
    cfg = configure(Cfg, [str(f), "--batch_size=64"])
    assert cfg.batch_size == 64 and cfg.learning_rate == pytest.approx(1e-3)


def test_int_is_a_valid_float_but_not_the_other_way():
    cfg = configure(Cfg, ["--learning_rate=1"])
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    with pytest.raises(UserError, match="batch_size must be int"):
        configure(Cfg, ["--batch_size=1.5"])
    with pytest.raises(UserError, match="batch_size must be int"):
        configure(Cfg, ["--batch_size=True"])
    with pytest.raises(UserError, match="compile must be bool"):
        configure(Cfg, ["--compile=1"])
    with pytest.raises(UserError, match="learning_rate must be float"):
        configure(Cfg, ["--learning_rate=fast"])


def test_optional_values_and_bare_flags():
    cfg = configure(Cfg, ["--top_k", "5", "--compile", "--top_p=0.9"])
    assert (cfg.top_k, cfg.compile, cfg.top_p) == (5, True, 0.9)
    assert configure(Cfg, ["--top_k=None", "--compile=False"]).top_k is None
    with pytest.raises(UserError, match="top_k must be int or None"):
        configure(Cfg, ["--top_k=0.5"])


def test_string_settings_keep_digits_as_text():
    assert configure(Cfg, ["--out_dir", "123"]).out_dir == "123"


def test_unknown_key_names_the_closest_keys(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'batchsize'.*batch_size"):
        configure(Cfg, ["--batchsize=3"])
    f = tmp_path / "c.py"
    f.write_text("learning_rat = 0.1\n")
    with pytest.raises(UserError, match=r"'learning_rat'.*learning_rate"):
        configure(Cfg, [str(f)])


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        configure(Cfg, [str(tmp_path / "missing.py")])
    f = tmp_path / "bad.py"
    f.write_text("batch_size = 1 / 0\n")
    with pytest.raises(UserError, match="ZeroDivisionError"):
        configure(Cfg, [str(f)])
    with pytest.raises(UserError, match="needs a value"):
        configure(Cfg, ["--batch_size"])


def test_include_runs_the_other_file_here_and_later_lines_win(tmp_path, monkeypatch):
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "base.py").write_text("batch_size = 999\n")  # a decoy: names are relative to the including file
    (tmp_path / "conf" / "base" / "root.py").write_text("top_k = 3\n")
    (tmp_path / "conf" / "base.py").write_text('include("base/root.py")\nout_dir = "a"\nbatch_size = 4\n')
    (tmp_path / "conf" / "child.py").write_text('batch_size = 2\ninclude("base.py")\nlearning_rate = 0.5\n'
                                                'batch_size = batch_size * 2  # the included value, overridden\n')
    monkeypatch.chdir(tmp_path)
    cfg = configure(Cfg, ["conf/child.py"])
    assert (cfg.out_dir, cfg.batch_size, cfg.learning_rate, cfg.top_k) == ("a", 8, 0.5, 3)


def test_a_missing_or_circular_include_is_an_error_naming_it(tmp_path):
    f = tmp_path / "c.py"
    f.write_text('include("nope.py")\n')
    with pytest.raises(UserError, match=f"{f}: include\\('nope.py'\\): config file not found: {tmp_path / 'nope.py'}"):
        configure(Cfg, [str(f)])
    f.write_text('include("c.py")\n')
    with pytest.raises(UserError, match="includes a file that is including it"):
        configure(Cfg, [str(f)])
    (tmp_path / "d.py").write_text("batch_size = 1 / 0\n")
    f.write_text('include("d.py")\n')
    with pytest.raises(UserError, match=f"config file {tmp_path / 'd.py'} failed: ZeroDivisionError"):
        configure(Cfg, [str(f)])


def test_a_missing_include_is_one_line_and_exit_2(tmp_path):
    f = tmp_path / "c.py"
    f.write_text('include("shakespeare_chr.py")\n')
    r = run_script("train.py", str(f), f"--out_dir={tmp_path / 'out'}")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: {f}: include('shakespeare_chr.py'): config file not found: "
                                     f"{tmp_path / 'shakespeare_chr.py'}"]
    assert not (tmp_path / "out").exists()


def test_every_shipped_config_loads_and_passes_the_checks():
    import glob
    import os

    import train
    from conftest import ROOT
    from model import GPT
    paths = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))
    assert len(paths) >= 15
    for path in paths:
        cfg = configure(train.TrainConfig, [path])  # an unknown setting name, or a bad include, is an error here
        train.check(cfg)
        if os.path.basename(path) == "shakespeare_char_seed_llama.py":  # the seed documents' ~1.1M parameters
            assert GPT(train.model_config(cfg, 65)).num_params() == 4 * (65_536 + 196_608 + 256) + 8_320 + 128
            assert cfg.max_iters * cfg.batch_size == 1_003_840  # every window start of 90% of the text, once
