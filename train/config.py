"""Training recipe: nested frozen dataclasses, loaded from YAML with key=value overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from infer.search import SearchConfig
from seq2seq.config import ConfigError, ModelConfig, apply_overrides, build_config, load_yaml
from seq2seq.data import DataConfig, DataError
from seq2seq.tokenizer import VocabConfig
from train.schedule import SCHEDULES


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 7e-4  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 4000  # linear warmup, then the schedule's decay
    schedule: str = "inverse_sqrt"  # inverse_sqrt (Vaswani et al.) | cosine (to zero at max_steps)
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # gradient norm clipping; 0 turns it off
    label_smoothing: float = 0.1
    rdrop_alpha: float = 0.0  # R-Drop: weight of the KL between two dropout passes; 0 turns it off
    ema_decay: float = 0.0  # > 0: validate, checkpoint and translate with an exponential moving average of the weights
    max_tokens: int = 4096  # padded tokens per micro-batch, per process
    accum_steps: int = 1  # micro-batches per update, per process
    max_steps: int = 10000  # updates
    max_epochs: int = 0  # stop after this many passes over the data; 0: no limit

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or self.max_tokens < 1 or self.accum_steps < 1:
            raise ValueError("need lr > 0, warmup_steps >= 0, max_tokens >= 1 and accum_steps >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.rdrop_alpha < 0:
            raise ValueError(f"rdrop_alpha={self.rdrop_alpha} must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 1000  # validate (and checkpoint) every this many updates
    search: SearchConfig = field(default_factory=lambda: SearchConfig(beam_size=4))  # decoding for BLEU
    max_tokens: int = 8192  # padded tokens per decoding batch, beams included
    patience: int = 0  # stop after this many validations without a better BLEU; 0: never
    keep_last: int = 5  # step checkpoints kept besides best.pt and last.pt
    average_last: int = 0  # at the end, average the last N step checkpoints; final.pt is whichever validates better

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 1:
            raise ValueError(f"need every >= 1 and keep_last >= 1, got {self.every} and {self.keep_last}")
        if self.average_last > self.keep_last:
            raise ValueError(f"average_last={self.average_last} needs keep_last >= {self.average_last}, got {self.keep_last}")


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/default"  # checkpoints, metrics.jsonl, curves.png, tokenizer
    seed: int = 1
    device: str = "auto"  # auto (cuda when available), cpu, cuda
    resume: bool = False  # continue from run_dir/checkpoints/last.pt
    members: int = 1  # > 1: train this many models (seeds seed, seed + 1, ...) and translate with their ensemble
    compile: bool = False  # torch.compile the forward and loss: faster updates after minutes of compiling (big runs)
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab sizes are set from the vocabulary
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: expected auto, cpu or cuda")
        if self.members < 1:
            raise ValueError(f"members={self.members} must be at least 1")
        if self.model.share_embeddings and not self.vocab.joint:
            raise ValueError("model.share_embeddings needs vocab.joint: true")
        if self.data.max_len + 1 > self.model.max_positions:  # + EOS (source) or BOS (decoder input)
            raise ValueError(f"data.max_len={self.data.max_len} needs model.max_positions >= {self.data.max_len + 1},"
                             f" got {self.model.max_positions}")


def load_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    """Recipe from a YAML file (or defaults) plus overrides; errors name the file and key."""
    data = load_yaml(path) if path else {}
    try:  # errors read FILE: KEY: message
        apply_overrides(data, list(overrides))
        return build_config(TrainConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None


def to_dict(cfg) -> dict:
    """Plain nested dict (lists, not tuples) for checkpoints and logs."""
    return dataclasses.asdict(cfg)


def in_recipe(path: str, err: Exception) -> Exception:
    """err, with the recipe file named first where it is about a recipe key (a DataError that
    starts with `data.`): FILE: KEY: message."""
    if isinstance(err, DataError) and str(err).startswith("data."):
        return DataError(f"{path}: {err}")
    return err
