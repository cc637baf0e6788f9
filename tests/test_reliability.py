"""Faults and bad input: interrupts, kills, reused or shared output directories, corrupted or crafted
checkpoints, a full disk, collapse, and the clean errors the command line prints for all of them."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from a2tgpo_lab import preset
from a2tgpo_lab.errors import (CheckpointError, DiskFullError, ModelError, MissingFileError, RunDirError,
                               TrainingCollapsed)
from a2tgpo_lab.trainer import A2TGPOTrainer
from conftest import assert_same_training


# --------------------------------------------------------------------------- a small run on the tiny model
@pytest.fixture(scope="module")
def world():
    from a2tgpo_lab.envs.search import bundled_search_tool
    from a2tgpo_lab.envs.world import load_split

    return load_split("train")[:40], load_split("dev")[:4], bundled_search_tool(topk=2)


def small(output_dir, name="a2tgpo", **overrides):
    values = dict(max_steps=3, num_prompts_per_step=2, num_generations=2, max_turns=2, eval_steps=100,
                  eval_num_prompts=2, save_steps=2, learning_rate=1e-3, output_dir=str(output_dir), seed=1,
                  num_mini_batches=2)
    return preset(name, **{**values, **overrides})


def make(cfg, world, **kwargs):
    train, dev, tool = world
    return A2TGPOTrainer(cfg, train_examples=train, eval_examples=dev, tool=tool, **kwargs)


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters() if p.requires_grad])


def logged_steps(output_dir, name="metrics.jsonl"):
    return [json.loads(line)["step"] for line in open(Path(output_dir) / name)]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """An uninterrupted 3-step run: what every interrupted-and-resumed run must equal."""
    trainer = make(small(tmp_path_factory.mktemp("reference")), world)
    trainer.train()
    return params(trainer), [row["reward"] for row in trainer.history]


def resume_and_finish(cfg, world):
    resumed = make(cfg.replace(resume_from_checkpoint="latest"), world)
    resumed.train()
    return resumed


# --------------------------------------------------------------------------- interrupts
def _signal_once(signum):
    fired = []

    def fire():
        if not fired:
            fired.append(True)
            signal.raise_signal(signum)
    return fire


@pytest.fixture
def sigterm_guard():
    """Without the fix SIGTERM would end pytest itself; make it a plain test failure instead."""
    def fail(signum, frame):
        raise RuntimeError("SIGTERM reached the test: the trainer does not handle it")
    previous = signal.signal(signal.SIGTERM, fail)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("point, signum", [
    ("rollout", signal.SIGINT),          # before the update: the step is dropped
    ("optimizer_step", signal.SIGINT),   # after the first of two optimizer steps
    ("scheduler_step", signal.SIGINT),   # after the update, before the step is counted
    ("record", signal.SIGINT),           # while the record is built, before counting and logging
    ("rollout", signal.SIGTERM),         # preemption: saves and stops like Ctrl-C
    ("optimizer_step", signal.SIGTERM),
])
def test_interrupt_at_any_point_of_a_step_resumes_exactly(point, signum, world, reference, tmp_path, monkeypatch,
                                                         sigterm_guard):
    import a2tgpo_lab.rollout as rollout_module

    cfg = small(tmp_path / "run")
    trainer = make(cfg, world)
    fire = _signal_once(signum)

    def at_step_one(func):
        def wrapped(*args, **kwargs):
            out = func(*args, **kwargs)
            if trainer.global_step == 1:
                fire()
            return out
        return wrapped

    if point == "rollout":
        monkeypatch.setattr(rollout_module, "generate_rollouts", at_step_one(rollout_module.generate_rollouts))
    elif point == "optimizer_step":
        monkeypatch.setattr(trainer.optimizer, "step", at_step_one(trainer.optimizer.step))
    elif point == "scheduler_step":
        scheduler_class = type(trainer.scheduler)  # (an instance attribute would end up in its state_dict)
        monkeypatch.setattr(scheduler_class, "step", at_step_one(scheduler_class.step))
    else:
        monkeypatch.setattr(A2TGPOTrainer, "_make_record", at_step_one(A2TGPOTrainer._make_record))
    trainer.train()
    assert trainer.global_step < cfg.max_steps
    monkeypatch.undo()

    resumed = resume_and_finish(cfg, world)
    expected_params, expected_rewards = reference
    assert [row["reward"] for row in resumed.history] == expected_rewards
    assert_same_training(expected_params, params(resumed), learning_rate=cfg.learning_rate,
                         optimizer_steps=2 * cfg.num_mini_batches)  # at most two steps are redone
    assert logged_steps(cfg.output_dir) == [0.0, 1.0, 2.0]
    completions = logged_steps(cfg.output_dir, "completions.jsonl")
    assert sorted(set(completions)) == [0, 1, 2] and len(completions) == 3 * 4
    assert trainer.interrupted == ("SIGINT" if signum == signal.SIGINT else "SIGTERM")


def test_second_ctrl_c_while_saving_leaves_no_temp_dir(world, tmp_path, monkeypatch):
    import a2tgpo_lab.models as models
    import a2tgpo_lab.rollout as rollout_module

    cfg = small(tmp_path / "run", max_steps=4)
    trainer = make(cfg, world)
    first, second = _signal_once(signal.SIGINT), _signal_once(signal.SIGINT)
    real_rollouts, real_save = rollout_module.generate_rollouts, models.save_policy

    def rollouts(*args, **kwargs):
        if trainer.global_step == 3:
            first()
        return real_rollouts(*args, **kwargs)

    def save_policy(model, directory):
        real_save(model, directory)
        if trainer.global_step == 3:
            second()  # the user presses Ctrl-C again while the interrupt's checkpoint is written

    monkeypatch.setattr(rollout_module, "generate_rollouts", rollouts)
    monkeypatch.setattr(models, "save_policy", save_policy)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not list(Path(cfg.output_dir).glob("*.tmp")), "a half-written checkpoint directory was left behind"
    monkeypatch.undo()
    assert make(cfg.replace(resume_from_checkpoint="latest"), world).global_step == 2


def test_exactly_one_log_line_per_step_after_resuming_an_older_checkpoint(world, tmp_path):
    cfg = small(tmp_path / "run", max_steps=3)
    make(cfg, world).train()
    # a kill -9 after step 2 was logged, before its checkpoint was written: the newest checkpoint is step 2
    import shutil

    shutil.rmtree(Path(cfg.output_dir) / "checkpoint-3")
    resumed = make(cfg.replace(resume_from_checkpoint="latest", max_steps=4), world)
    assert resumed.global_step == 2
    resumed.train()
    assert logged_steps(cfg.output_dir) == [0.0, 1.0, 2.0, 3.0]
    assert [row["step"] for row in resumed.history] == [0.0, 1.0, 2.0, 3.0]


# --------------------------------------------------------------------------- checkpoints
class _TouchOnUnpickle:
    """A pickle that creates a file when loaded: what an attacker's trainer_state.pt would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_crafted_pickle_in_a_checkpoint_is_never_executed(world, tmp_path):
    cfg = small(tmp_path / "run", max_steps=2)
    make(cfg, world).train()
    checkpoint = Path(cfg.output_dir) / "checkpoint-2"
    for name in ("trainer_state.json", "optimizer.safetensors", "rng.safetensors", "history.json"):
        (checkpoint / name).unlink(missing_ok=True)
    marker = tmp_path / "code_ran"
    torch.save({"step": 2, "payload": _TouchOnUnpickle(marker)}, checkpoint / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        make(cfg.replace(resume_from_checkpoint="latest"), world)
    assert not marker.exists(), "loading the checkpoint ran code"


def test_corrupted_newest_checkpoint_falls_back_to_an_intact_older_one(world, tmp_path):
    cfg = small(tmp_path / "run", max_steps=4)
    make(cfg, world).train()
    broken = Path(cfg.output_dir) / "checkpoint-4" / "optimizer.safetensors"
    broken.write_bytes(broken.read_bytes()[:40])  # torn by a crash of the disk, say
    with pytest.warns(UserWarning, match=str(broken)):
        resumed = make(cfg.replace(resume_from_checkpoint="latest"), world)
    assert resumed.global_step == 2
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        make(cfg.replace(resume_from_checkpoint=str(broken.parent)), world)


def test_checkpoint_with_nan_weights_is_refused(world, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = small(tmp_path / "run", max_steps=2)
    make(cfg, world).train()
    policy = next((Path(cfg.output_dir) / "checkpoint-2" / "policy").glob("*.safetensors"))
    tensors = load_file(str(policy))
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(policy), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="NaN"):
        make(cfg.replace(resume_from_checkpoint="latest"), world)


def test_pruning_and_latest_only_touch_this_runs_checkpoints(world, tmp_path):
    from a2tgpo_lab.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

    trainer = make(small(tmp_path / "run"), world)
    args = (trainer.model, trainer.optimizer, trainer.scheduler, trainer.cfg.to_dict(), [])
    save_checkpoint(tmp_path / "run", 9, *args, run_id="other")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / "run", step, *args, keep_last=2, run_id="mine")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-3", "checkpoint-9"]
    assert latest_checkpoint(tmp_path / "run", run_id="mine").name == "checkpoint-3"


# --------------------------------------------------------------------------- one run per output_dir
def test_a_second_run_in_the_same_output_dir_is_refused(world, tmp_path):
    first = small(tmp_path / "run", max_steps=2)
    make(first, world).train()
    other = small(tmp_path / "run", name="grpo", seed=7, max_steps=2)
    with pytest.raises(RunDirError, match="resume_from_checkpoint.*overwrite_output_dir"):
        make(other, world).train()
    assert logged_steps(first.output_dir) == [0.0, 1.0], "the refused run must not have written anything"
    replacement = make(other, world, overwrite_output_dir=True)
    replacement.train()
    assert logged_steps(first.output_dir) == [0.0, 1.0]
    resumed = make(other.replace(resume_from_checkpoint="latest", max_steps=3), world)
    assert resumed.run_id == replacement.run_id and resumed.global_step == 2


def test_concurrent_run_in_the_same_output_dir_is_refused_by_a_lock(world, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"f = open({str(run_dir / '.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid()))\n"
        "f.flush(); print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = make(small(run_dir), world)
        with pytest.raises(RunDirError, match=f"in use by another training process \\(pid {holder.pid}\\)"):
            trainer.train()
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    trainer.train()  # the lock died with its process
    assert logged_steps(run_dir) == [0.0, 1.0, 2.0]


def test_resume_with_a_different_config_is_refused_unless_allowed(world, tmp_path):
    cfg = small(tmp_path / "run", max_steps=2)
    make(cfg, world).train()
    changed = cfg.replace(resume_from_checkpoint="latest", learning_rate=5e-4, max_steps=3)
    with pytest.raises(ValueError, match=r"learning_rate 0\.001 -> 0\.0005.*allow_config_change"):
        make(changed, world)
    assert make(changed, world, allow_config_change=True).global_step == 2
    assert make(cfg.replace(resume_from_checkpoint="latest", max_steps=5, save_steps=1), world).global_step == 2


# --------------------------------------------------------------------------- logs and a full disk
def test_torn_jsonl_line_is_repaired_on_resume(world, tmp_path):
    cfg = small(tmp_path / "run", max_steps=2)
    make(cfg, world).train()
    with open(Path(cfg.output_dir) / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 2.0, "rew')  # a write cut short by a full disk or a kill
    with pytest.warns(UserWarning, match="not JSON"):
        make(cfg.replace(resume_from_checkpoint="latest", max_steps=3), world).train()
    assert logged_steps(cfg.output_dir) == [0.0, 1.0, 2.0]


def test_read_jsonl_skips_a_torn_line_with_a_warning(tmp_path):
    from a2tgpo_lab.rundir import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "re{"step": 2}\n{"step": 3}\n')
    with pytest.warns(UserWarning, match="line 2"):
        assert read_jsonl(path) == [{"step": 0}, {"step": 3}]


def test_full_disk_gives_a_clear_error_and_leaves_no_partial_files(world, tmp_path, monkeypatch):
    import a2tgpo_lab.models as models
    from a2tgpo_lab.rundir import append_jsonl

    if os.path.exists("/dev/full"):
        with pytest.raises(DiskFullError, match="No space left on device"):
            append_jsonl("/dev/full", [{"step": 0}])
    trainer = make(small(tmp_path / "run"), world)

    def no_space(model, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "partial.safetensors").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models, "save_policy", no_space)
    with pytest.raises(DiskFullError, match="No space left on device while writing checkpoint-0"):
        trainer.save()
    assert not list((tmp_path / "run").glob("checkpoint-*")), "a partial checkpoint was left behind"


# --------------------------------------------------------------------------- collapse
def test_non_finite_weights_stop_training_without_saving_them(world, tmp_path, monkeypatch):
    trainer = make(small(tmp_path / "run", max_steps=4), world)
    real_step = trainer.optimizer.step

    def poisoned_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        if trainer.global_step == 2:  # e.g. what --learning_rate 1e6 or a NaN gradient does
            next(p for p in trainer.model.parameters() if p.requires_grad).data.fill_(float("nan"))
        return out

    monkeypatch.setattr(trainer.optimizer, "step", poisoned_step)
    with pytest.raises(TrainingCollapsed, match="NaN/inf.*checkpoint-2"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    assert logged_steps(tmp_path / "run") == [0.0, 1.0]


def test_steps_with_nothing_to_learn_stop_training_with_a_message(world, tmp_path):
    # one token per turn: no turn can hold a complete tag, every rollout is malformed
    cfg = small(tmp_path / "run", max_steps=10, max_new_tokens_per_turn=1, collapse_patience=2)
    trainer = make(cfg, world)
    with pytest.raises(TrainingCollapsed, match="for 2 steps in a row no rollout produced an <answer>"):
        trainer.train()
    assert trainer.global_step == 2 and (tmp_path / "run" / "checkpoint-2").is_dir()


# --------------------------------------------------------------------------- inputs
def test_prompt_budget_drops_long_questions_with_a_warning(world, tmp_path):
    from a2tgpo_lab.config import ConfigError
    from a2tgpo_lab.envs import QAExample

    train, dev, tool = world
    huge = QAExample("huge-1", " ".join(["who"] * 5000) + " ?", ("Oslund",))
    with pytest.warns(UserWarning, match=r"1 of 41 training questions .*id huge-1"):
        trainer = A2TGPOTrainer(small(tmp_path / "a", max_prompt_length=128), train_examples=[*train, huge],
                                eval_examples=dev, tool=tool)
    assert huge not in trainer.train_examples and len(trainer.train_examples) == 40
    with pytest.raises(ConfigError, match="none is left"):
        A2TGPOTrainer(small(tmp_path / "b", max_prompt_length=128), train_examples=[huge], eval_examples=dev,
                      tool=tool)
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        A2TGPOTrainer(small(tmp_path / "c", max_prompt_length=1000, max_completion_length=384),
                      train_examples=train, eval_examples=dev, tool=tool)


def test_observation_truncation_keeps_the_closing_tag():
    from a2tgpo_lab.chat import encode
    from a2tgpo_lab.models import load_tokenizer, resolve_model_path
    from a2tgpo_lab.protocol import INFO_CLOSE, get_protocol

    tokenizer = load_tokenizer(resolve_model_path("bundled"))
    protocol = get_protocol("search_r1")
    observation = protocol.format_observation(["Doc text that goes on and on ."] * 20)
    for cap in (8, 16, 40):
        ids = protocol.truncate_observation(observation, cap, lambda text: encode(tokenizer, text))
        assert len(ids) <= cap
        assert tokenizer.decode(ids).rstrip().endswith(INFO_CLOSE)
    short = protocol.format_observation(["one ."])
    assert protocol.truncate_observation(short, 64, lambda text: encode(tokenizer, text)) == encode(tokenizer, short)


def test_model_path_typo_and_non_model_directory_fail_at_once(tmp_path, monkeypatch):
    from a2tgpo_lab.models import resolve_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a2tgpo").mkdir(parents=True)
    started = time.monotonic()
    with pytest.raises(MissingFileError, match="runs/a2tgp"):
        resolve_model_path("runs/a2tgp")  # one slash: looks like a Hub id, but runs/ is a local directory
    with pytest.raises(ModelError, match="holds no model"):
        resolve_model_path("runs/a2tgpo")
    assert time.monotonic() - started < 5


def test_bitsandbytes_kernels_line_is_silenced(caplog):
    import logging

    import a2tgpo_lab.models  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module kernels")
        logger.warning("an unrelated bitsandbytes warning")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["an unrelated bitsandbytes warning"]


# --------------------------------------------------------------------------- settings
def _fields_of_type(*kinds):
    import dataclasses
    import typing

    from a2tgpo_lab.config import A2TGPOConfig

    hints = typing.get_type_hints(A2TGPOConfig)
    found = []
    for f in dataclasses.fields(A2TGPOConfig):
        hint = hints[f.name]
        base = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) else [hint]
        if len(base) == 1 and base[0] in kinds:
            found.append(f.name)
    return found


@pytest.mark.parametrize("name", _fields_of_type(float))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_rejected_in_every_float_field(name, value):
    from a2tgpo_lab.config import A2TGPOConfig, ConfigError

    with pytest.raises(ConfigError, match=f"A2TGPOConfig.{name}=.*finite number"):
        A2TGPOConfig(**{name: value})


@pytest.mark.parametrize("name", _fields_of_type(int, float, bool))
def test_strings_are_rejected_in_numeric_and_bool_fields(name):
    from a2tgpo_lab.config import A2TGPOConfig, ConfigError

    with pytest.raises(ConfigError, match=f"A2TGPOConfig.{name}='no' \\(str\\) must be .*without quotes"):
        A2TGPOConfig(**{name: "no"})


def test_yaml_scientific_notation_is_a_number_and_quoted_values_are_refused(tmp_path):
    from a2tgpo_lab.config import A2TGPOConfig, ConfigError

    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-4\nweight_decay: 1E2\nmax_grad_norm: -2.5e+0\nuse_peft: no\n")
    with pytest.raises(ConfigError, match="max_grad_norm"):
        A2TGPOConfig.from_file(path)  # read as numbers: now the range check speaks
    path.write_text("learning_rate: 1e-4\nweight_decay: 1E2\nuse_peft: no\n")
    cfg = A2TGPOConfig.from_file(path)
    assert (cfg.learning_rate, cfg.weight_decay, cfg.use_peft) == (1e-4, 100.0, False)
    path.write_text('use_peft: "no"\n')
    with pytest.raises(ConfigError, match="use_peft='no'.*true or false"):
        A2TGPOConfig.from_file(path)


@pytest.mark.parametrize("suffix, text, where", [
    (".yaml", "max_steps: 3\nlearning_rate: [1e-4\n", "line 3"),
    (".json", '{"max_steps": 3,\n "seed": }', "line 2"),
    (".yaml", b"seed: 1\nsystem_prompt: \xff\xfe\n", "not UTF-8"),
])
def test_malformed_config_files_name_the_file_and_line(tmp_path, suffix, text, where):
    from a2tgpo_lab.config import A2TGPOConfig, ConfigError

    path = tmp_path / f"run{suffix}"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=f"{path}.*{where}|{path} is {where}"):
        A2TGPOConfig.from_file(path)


def test_unreachable_hub_fails_fast_and_says_so(monkeypatch):
    import socket

    from a2tgpo_lab.models import load_tokenizer

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def no_network(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    started = time.monotonic()
    with pytest.raises(ModelError, match="cannot be reached.*HF_HUB_OFFLINE=1"):
        load_tokenizer("a2tgpo-lab-tests/no-such-model")
    assert time.monotonic() - started < 10
