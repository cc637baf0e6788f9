"""The command line: flags map onto config fields, bad values give a clear error, presets list."""
from __future__ import annotations

import pytest

from a2tgpo_lab.cli import _config_from_args, build_parser, main


def parse(*argv):
    return _config_from_args(build_parser().parse_args(list(argv)))


def test_flags_override_preset():
    cfg = parse("train", "--preset", "igpo", "--num_generations", "4", "--no-adaptive_clip", "--use_peft",
                "--epsilon", "0.01")
    assert (cfg.preset_name, cfg.num_generations, cfg.adaptive_clip, cfg.use_peft, cfg.epsilon) == \
        ("igpo", 4, False, True, 0.01)
    assert cfg.normalization == "pooled" and cfg.rescale == "none"


def test_default_is_a2tgpo():
    cfg = parse("train")
    assert cfg.preset_name == "a2tgpo" and cfg.normalization == "turn_group" and cfg.adaptive_clip


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: grpo\nmax_steps: 3\nlearning_rate: 0.001\n")
    cfg = parse("train", "--config", str(path), "--max_steps", "5")
    assert cfg.preset_name == "grpo" and cfg.max_steps == 5 and cfg.learning_rate == 0.001


def test_bad_value_names_the_field(capsys):
    code = main(["train", "--rescale", "cube_root"])
    assert code == 2
    assert "rescale" in capsys.readouterr().err


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "igpo", "a2tgpo", "a2tgpo_fixed_clip"):
        assert name in out


def test_unknown_flag_is_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--no_such_field", "1"])
