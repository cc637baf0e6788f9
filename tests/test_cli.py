"""The command line: flags map onto config fields, bad values give a clear error, presets list."""
from __future__ import annotations

import json

import pytest

from a2tgpo_lab.cli import _config_from_args, build_parser, main
from a2tgpo_lab.config import PRESETS


def parse(*argv):
    return _config_from_args(build_parser().parse_args(list(argv)))


def test_flags_override_preset():
    cfg = parse("train", "--preset", "igpo", "--num_generations", "4", "--no-adaptive_clip", "--use_peft",
                "--epsilon", "0.01")
    assert (cfg.preset_name, cfg.num_generations, cfg.adaptive_clip, cfg.use_peft, cfg.epsilon) == \
        ("igpo", 4, False, True, 0.01)
    flagged = {"num_generations", "adaptive_clip", "use_peft", "epsilon"}
    assert all(getattr(cfg, name) == value for name, value in PRESETS["igpo"].items() if name not in flagged)


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


# --------------------------------------------------------------------------- one error style
def _bad_jsonl(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text('{"question": "who founded Velmora ?", "golden_answers": ["Tarsk"]}\n{"question": ""}\n')
    return path


@pytest.mark.parametrize("case", ["setting", "config_file", "data", "model", "resume", "disk"])
def test_expected_errors_print_one_message_and_exit_2(case, tmp_path, capsys, monkeypatch):
    import errno

    import a2tgpo_lab.cli as cli

    run = ["--output_dir", str(tmp_path / "run"), "--skip_eval"]
    argv, named = {
        "setting": (["train", "--temperature", "nan"], "temperature"),
        "config_file": (["train", "--config", str(tmp_path / "run.yaml")], "run.yaml, line 2"),
        "data": (["train", "--dataset", str(_bad_jsonl(tmp_path)), *run], "questions.jsonl, row 2"),
        "model": (["eval", "--model_name_or_path", str(tmp_path)], "holds no model"),
        "resume": (["train", "--resume_from_checkpoint", "latest", *run], "No checkpoint-<step> directory"),
        "disk": (["train", *run], "No space left on device"),
    }[case]
    (tmp_path / "run.yaml").write_text("max_steps: 3\nseed: 1 : 2\n")
    if case == "disk":
        def no_space(args):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.jsonl"))
        monkeypatch.setattr(cli, "cmd_train", no_space)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("a2tgpo-lab: error: ")]
    assert len(errors) == 1 and named in errors[0]


@pytest.mark.parametrize("argv", [["--debug", "train", "--temperature", "nan"], ["train", "--temperature", "nan",
                                                                               "--debug"]])
def test_debug_shows_the_traceback(argv, capsys):
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import a2tgpo_lab.cli as cli

    def bug(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(cli, "cmd_train", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train"])


def test_resume_without_preset_continues_with_the_checkpoints_config(tmp_path):
    from a2tgpo_lab import preset

    checkpoint = tmp_path / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    saved = preset("grpo", seed=7, max_steps=4, learning_rate=1e-4, output_dir=str(tmp_path / "run"))
    (checkpoint / "config.json").write_text(json.dumps(saved.to_dict()))
    cfg = parse("train", "--resume_from_checkpoint", str(checkpoint), "--max_steps", "8")
    assert (cfg.preset_name, cfg.seed, cfg.learning_rate, cfg.max_steps) == ("grpo", 7, 1e-4, 8)
    assert cfg.advantage_estimator == "grpo" and cfg.resume_from_checkpoint == str(checkpoint)


def test_train_prints_the_clip_fraction_per_turn(tmp_path, capsys):
    code = main(["train", "--max_steps", "2", "--num_prompts_per_step", "2", "--num_generations", "4", "--skip_eval",
                 "--output_dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    summary = next(line for line in out.splitlines() if line.startswith("clip fraction"))
    assert "all turns" in summary and "turn 1" in summary
    share = float(summary.split("all turns ")[1].split()[0])
    assert share > 0, "default training takes several optimizer steps per batch, so some tokens are clipped"


def test_eval_refuses_a_model_with_nan_weights(tmp_path, capsys):
    import torch

    from a2tgpo_lab.models import load_model_and_tokenizer, save_policy

    model, tokenizer = load_model_and_tokenizer(model_name_or_path="bundled", device="cpu")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))  # what a diverged run would have saved
    save_policy(model, tmp_path / "policy")
    assert main(["eval", "--model_name_or_path", str(tmp_path / "policy"), "--eval_num_prompts", "2"]) == 2
    assert "NaN/inf" in capsys.readouterr().err
