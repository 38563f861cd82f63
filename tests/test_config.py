"""Recipes: YAML files and overrides into frozen dataclasses; bad keys and types are named."""
import re
from pathlib import Path

import pytest

from seq2seq.config import ConfigError
from train.config import TrainConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    assert isinstance(load_config(path), TrainConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_key_is_commented(path):
    """Each `key: value` line carries a comment, on the line or the line above."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[a-z_0-9]+:\s*\S", line) and "#" not in line:
            assert i > 0 and lines[i - 1].strip().startswith("#"), f"{path.name}:{i + 1}: {line.strip()} has no comment"


def test_overrides_reach_nested_sections():
    cfg = load_config(TINY, ["model.d_model=64", "eval.search.beam_size=3", "resume=true", "optim.lr=1e-3"])
    assert (cfg.model.d_model, cfg.eval.search.beam_size, cfg.resume, cfg.optim.lr) == (64, 3, True, 1e-3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.learning_rate=1"], r"tiny\.yaml: optim\.learning_rate: unknown key"),
        (["model.d_model=big"], r"tiny\.yaml: model\.d_model: expected int, got 'big'"),
        (["resume=maybe"], r"tiny\.yaml: resume: expected bool"),
        (["eval.search.beam_size=0"], r"beam_size=0"),
        (["nonsense"], r"override 'nonsense': expected key=value"),
        (["model.share_embeddings=true", "vocab.joint=false"], "share_embeddings needs vocab.joint"),
        (["model.max_positions=32"], r"data.max_len=64 needs model.max_positions >= 65, got 32"),
        (["eval.average_last=4"], r"average_last=4 needs keep_last >= 4, got 2"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, overrides)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modle:\n  d_model: 8\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: modle: unknown key"):
        load_config(unknown)
    with pytest.raises(ConfigError, match=r"missing\.yaml: no such config file"):
        load_config(tmp_path / "missing.yaml")
