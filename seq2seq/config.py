"""Configs: frozen dataclasses built from YAML mappings, with `a.b=value` overrides.

ModelConfig is the single source of truth for the architecture. build_config turns a nested
mapping into any such dataclass and rejects unknown keys and wrong types by name.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

ACTIVATIONS = ("relu", "gelu")
NORMS = ("post", "pre")


@dataclass(frozen=True)
class ModelConfig:
    src_vocab_size: int = 32000  # source vocabulary size (joint vocab: equal to tgt_vocab_size)
    tgt_vocab_size: int = 32000  # target vocabulary size
    d_model: int = 512  # width of every residual stream
    n_heads: int = 8  # attention heads; must divide d_model
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048  # hidden width of the position-wise feed-forward block
    dropout: float = 0.1  # on embeddings, sublayer outputs and the feed-forward hidden layer
    attn_dropout: float = 0.0  # on attention weights
    activation: str = "relu"  # "relu" (the paper) or "gelu"
    norm: str = "post"  # "post" (the paper: norm after the residual add) or "pre"
    tie_output: bool = True  # decoder input embedding doubles as the output projection
    share_embeddings: bool = False  # one table for source and target (joint vocabulary)
    max_positions: int = 1024  # longest source or target sequence, in tokens
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {ACTIVATIONS}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: expected one of {NORMS}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs equal vocab sizes, got src_vocab_size={self.src_vocab_size}"
                f" and tgt_vocab_size={self.tgt_vocab_size}"
            )
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        specials = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        for name, value in specials.items():
            if not 0 <= value < min(self.src_vocab_size, self.tgt_vocab_size):
                raise ValueError(f"{name}={value} is outside the vocabulary")
        if len(set(specials.values())) != 3:
            raise ValueError(f"pad_id, bos_id and eos_id must differ, got {specials}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the key (and file, if any)."""


def build_config(cls, data: Mapping[str, Any] | None, where: str = ""):
    """Build dataclass cls from a mapping, recursing into nested dataclasses.

    Unknown keys, wrong types and values the dataclass rejects raise ConfigError naming the
    dotted key, prefixed by `where` (a file name, say).
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{path}: unknown key (expected one of: {', '.join(fields)})")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def _coerce(hint, value, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, path)
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool) or not isinstance(value, hint) or (
        hint is int and isinstance(value, bool)
    ):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML scalars) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data
