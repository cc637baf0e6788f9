"""A2TGPOConfig: the preset table, validation messages, config files, epsilon defaults."""
from __future__ import annotations

import json
import re

import pytest

import a2tgpo_lab.config as config_module
from a2tgpo_lab.config import PRESETS, A2TGPOConfig, ConfigError, preset

# How the words of the module docstring's table map onto config fields.
NORMALIZATION_WORDS = {"pooled over turns": "pooled", "per (prompt, turn)": "turn_group"}
ACCUMULATION_WORDS = {"discounted / √n": "sqrt_n", "discounted, no √n": "none"}


def documented_table() -> dict[str, list[str]]:
    """Rows of the preset table in config.py's docstring: name -> [IG, normalization, accumulation, clip]."""
    lines = config_module.__doc__.splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("=====")]
    columns = [(m.start(), m.end()) for m in re.finditer(r"=+", lines[borders[0]])]
    rows = {}
    for line in lines[borders[1] + 1:borders[2]]:
        cells = [line[start:end if k < len(columns) - 1 else None].strip()
                 for k, (start, end) in enumerate(columns)]
        rows[cells[0]] = cells[1:]
    return rows


def test_docstring_table_lists_every_preset():
    assert set(documented_table()) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_its_table_row(name):
    ig, normalization, accumulation, clip = documented_table()[name]
    cfg = preset(name)
    assert cfg.preset_name == name
    assert cfg.uses_ig == (ig == "yes")
    assert cfg.adaptive_clip == (clip == "adaptive")
    if name == "grpo":
        assert cfg.advantage_estimator == "grpo"
        assert (normalization, accumulation) == ("outcome z-score", "outcome broadcast")
    else:
        assert cfg.normalization == NORMALIZATION_WORDS[normalization]
        assert cfg.rescale == ACCUMULATION_WORDS[accumulation]


def test_preset_overrides_and_unknown_names():
    assert preset("igpo", gamma=0.9).gamma == 0.9
    with pytest.raises(ConfigError, match="Unknown preset 'ppo'"):
        preset("ppo")
    with pytest.raises(ConfigError, match=r"Unknown A2TGPOConfig field\(s\) \['gama'\]"):
        preset("a2tgpo", gama=0.9)
    with pytest.raises(ConfigError, match="gamma"):
        A2TGPOConfig().replace(gamma=1.5)


@pytest.mark.parametrize("field, value", [
    ("advantage_estimator", "ppo"), ("rescale", "sqrt"), ("normalization", "batch"), ("ig_mode", "ratio"),
    ("loss_agg_mode", "mean"), ("num_generations", 1), ("max_turns", 0), ("gamma", 0.0), ("clip_beta", 1.0),
    ("group_std_floor", -1.0), ("min_group_size", 0), ("epsilon", 1.5), ("dual_clip", 1.0), ("temperature", 0.0),
    ("top_p", 1.5),
])
def test_validation_names_the_bad_field(field, value):
    with pytest.raises(ConfigError, match=field):
        A2TGPOConfig(**{field: value})


def test_four_bit_needs_lora():
    with pytest.raises(ConfigError, match="load_in_4bit"):
        A2TGPOConfig(load_in_4bit=True)
    assert A2TGPOConfig(load_in_4bit=True, use_peft=True).load_in_4bit


def test_epsilon_defaults_follow_the_ratio_level():
    turn = A2TGPOConfig()
    assert (turn.epsilon, turn.epsilon_high) == (3e-3, 4e-3)
    token = A2TGPOConfig(ratio_level="token")
    assert (token.epsilon, token.epsilon_high) == (0.2, 0.28)
    # an explicit epsilon wins; epsilon_high never drops below it
    assert A2TGPOConfig(ratio_level="token", epsilon=0.1).epsilon_high == 0.28
    assert A2TGPOConfig(ratio_level="token", epsilon=0.3).epsilon_high == 0.3
    assert A2TGPOConfig(epsilon=0.01, epsilon_high=0.02).epsilon_high == 0.02


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_from_file_with_preset_key(tmp_path, suffix):
    values = {"preset": "igpo", "gamma": 0.95, "num_generations": 4}
    path = tmp_path / f"run{suffix}"
    if suffix == ".yaml":
        path.write_text("preset: igpo\ngamma: 0.95\nnum_generations: 4\n")
    else:
        path.write_text(json.dumps(values))
    cfg = A2TGPOConfig.from_file(path)
    assert cfg.preset_name == "igpo" and cfg.normalization == "pooled" and cfg.rescale == "none"
    assert cfg.gamma == 0.95 and cfg.num_generations == 4


def test_from_file_without_preset_and_bad_files(tmp_path):
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"clip_beta": 0.5}))
    cfg = A2TGPOConfig.from_file(path)
    assert cfg.clip_beta == 0.5 and cfg.preset_name is None
    with pytest.raises(ConfigError, match="does not exist"):
        A2TGPOConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        A2TGPOConfig.from_file(tmp_path / "list.json")
    (tmp_path / "typo.yaml").write_text("clip_beat: 0.5\n")
    with pytest.raises(ConfigError, match="clip_beat"):
        A2TGPOConfig.from_file(tmp_path / "typo.yaml")


def test_dict_round_trip():
    cfg = preset("a2tgpo_no_rescale", seed=7)
    assert A2TGPOConfig.from_dict(cfg.to_dict()) == cfg
