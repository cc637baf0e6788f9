"""A2TGPOConfig: the preset table, validation messages, config files, epsilon defaults."""
from __future__ import annotations

import json
import re

import pytest

import a2tgpo_lab.config as config_module
from a2tgpo_lab.config import PRESETS, A2TGPOConfig, ConfigError, preset

def documented_table() -> dict[str, list[str]]:
    """Rows of the preset table in config.py's docstring: name -> [IG / normalization, advantage, clip, loss]
    (a row continued on the next line, first cell empty, is joined to it)."""
    lines = config_module.__doc__.splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("=====")]
    columns = [(m.start(), m.end()) for m in re.finditer(r"=+", lines[borders[0]])]
    rows: dict[str, list[str]] = {}
    for line in lines[borders[1] + 1:borders[2]]:
        cells = [line[start:end if k < len(columns) - 1 else None].strip()
                 for k, (start, end) in enumerate(columns)]
        if cells[0]:
            name = cells[0].rstrip(" *")
            rows[name] = cells[1:]
        else:
            rows[name] = [f"{old} {new}".strip() for old, new in zip(rows[name], cells[1:])]
    return rows


def test_docstring_table_lists_every_preset():
    assert set(documented_table()) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_its_table_row(name):
    normalization, advantage, clip, loss = documented_table()[name]
    cfg = preset(name)
    assert cfg.preset_name == name
    assert cfg.adaptive_clip == (clip == "adaptive")
    assert cfg.ratio_level == ("token" if loss.startswith("token ratio") else "turn")
    assert cfg.beta == (1e-3 if "KL 1e-3" in loss else 0.0)
    assert cfg.loss_agg_mode == ("token-mean" if "token-mean" in loss else "seq-mean-token-mean")
    if cfg.ratio_level == "token":
        assert (cfg.epsilon, cfg.epsilon_high) == (0.2, 0.2) and "0.2" in clip
    if advantage == "R̂ on every turn":
        assert cfg.advantage_estimator == "grpo" and not cfg.uses_ig
    elif advantage.startswith("Σ r̂"):
        assert cfg.advantage_estimator == "igpo" and cfg.igpo_norm == "joint" and normalization.startswith("joint")
    else:
        assert cfg.advantage_estimator == "a2tgpo"
        assert cfg.rescale == ("sqrt_n" if "√n" in advantage else "none")
        assert cfg.ig_alpha == (0.3 if advantage.startswith("0.3·") else 1.0)
        assert cfg.normalization == ("pooled" if normalization.startswith("pooled") else "turn_group")
        code = "logprob" in normalization
        assert (cfg.ig_mode, cfg.ig_first_turn, cfg.ig_last_context, cfg.var_eps) == (
            ("logprob", "none", "search", 1e-8) if code else ("prob", "query", "observation", 0.0))
        assert code == ("last context at search" in normalization)


def test_table_2_ladder_adds_one_idea_per_rung():
    ladder = [preset(name).to_dict() for name in ("igpo_tg", "igpo_tg_rescale", "a2tgpo")]
    changed = [{k for k in ladder[0] if a[k] != b[k] and k != "preset_name"} for a, b in zip(ladder, ladder[1:])]
    assert changed == [{"rescale"}, {"adaptive_clip"}]
    assert preset("igpo_tg_rescale").replace(preset_name="x") == preset("a2tgpo_fixed_clip").replace(preset_name="x")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_controlled_holds_the_loss_fixed(name):
    cfg = preset(name, controlled=True)
    reference = preset("a2tgpo")
    for field in ("ratio_level", "epsilon", "epsilon_high", "beta", "loss_agg_mode"):
        assert getattr(cfg, field) == getattr(reference, field), field
    # the estimator and clip factor stay the preset's
    for field in ("advantage_estimator", "rescale", "adaptive_clip", "ig_mode", "ig_alpha"):
        assert getattr(cfg, field) == getattr(preset(name), field), field


def test_controlled_rejects_another_loss():
    with pytest.raises(ConfigError, match="controlled"):
        preset("grpo").replace(controlled=True)
    with pytest.raises(ConfigError, match="controlled"):
        preset("a2tgpo", controlled=True, beta=0.01)


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
    ("ig_first_turn", "first"), ("ig_last_context", "answer"), ("igpo_norm", "pooled"), ("var_eps", -1e-8),
    ("ig_alpha", -0.3),
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
    assert (token.epsilon, token.epsilon_high) == (0.2, 0.2)       # the published GRPO / IGPO: symmetric
    # an explicit epsilon wins; epsilon_high never drops below it
    assert A2TGPOConfig(ratio_level="token", epsilon=0.1).epsilon_high == 0.2
    assert A2TGPOConfig(ratio_level="token", epsilon=0.3).epsilon_high == 0.3
    assert A2TGPOConfig(epsilon=0.01, epsilon_high=0.02).epsilon_high == 0.02


def test_changing_the_ratio_level_rederives_default_epsilons():
    token = A2TGPOConfig().replace(ratio_level="token")
    assert (token.epsilon, token.epsilon_high) == (0.2, 0.2)
    back = token.replace(ratio_level="turn")
    assert (back.epsilon, back.epsilon_high) == (3e-3, 4e-3)
    assert preset("grpo").replace(ratio_level="turn").epsilon == 3e-3
    # explicit widths are kept
    explicit = A2TGPOConfig(epsilon=0.01, epsilon_high=0.02).replace(ratio_level="token")
    assert (explicit.epsilon, explicit.epsilon_high) == (0.01, 0.02)
    assert A2TGPOConfig().replace(ratio_level="token", epsilon=0.1).epsilon == 0.1
    # other changes keep derived widths as they are
    assert A2TGPOConfig().replace(gamma=0.9).epsilon == 3e-3


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_from_file_with_preset_key(tmp_path, suffix):
    values = {"preset": "igpo", "gamma": 0.95, "num_generations": 4}
    path = tmp_path / f"run{suffix}"
    if suffix == ".yaml":
        path.write_text("preset: igpo\ngamma: 0.95\nnum_generations: 4\n")
    else:
        path.write_text(json.dumps(values))
    cfg = A2TGPOConfig.from_file(path)
    assert cfg.preset_name == "igpo" and cfg.advantage_estimator == "igpo" and cfg.ratio_level == "token"
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
