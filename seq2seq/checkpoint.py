"""Checkpoint files: atomic writes, safe loads (weights_only), and a format version.

A checkpoint is a dict of tensors and plain Python values. The model config and the
vocabularies travel inside it, so a checkpoint alone is enough to translate. An ensemble
checkpoint holds several models ("members", each with its weights and config) and one vocabulary.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from seq2seq.config import ModelConfig, build_config
from seq2seq.ensemble import Ensemble, check_members
from seq2seq.model import Transformer
from seq2seq.tokenizer import Vocabularies

FORMAT = "seq2seq-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file beside path, fsync, then rename over path.

    A crash or a full disk mid-write leaves the previous file at path untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location="cpu") -> dict:
    """Load and check a checkpoint; never runs code from the file (weights_only=True)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        # mmap: only the tensors read are paged in (a training checkpoint's optimizer state is not)
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?): {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a seq2seq checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ckpt.get('version')}, this seq2seq reads version {VERSION}")
    return ckpt


def inference_state(model: Transformer, vocab: Vocabularies) -> dict:
    """The part of a checkpoint that inference reads: format, weights, model config, vocabularies."""
    return {"format": FORMAT, "version": VERSION, "model": model.state_dict(),
            "model_config": dataclasses.asdict(model.config), "vocab": vocab.to_dict()}


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> tuple[Transformer | Ensemble, Vocabularies]:
    """Rebuild the model (eval mode, CPU), or the ensemble of an ensemble checkpoint, and its
    vocabularies from a loaded checkpoint."""
    if "members" in ckpt:
        members = [_build(m, f"{path}: member {i}") for i, m in enumerate(ckpt["members"], 1)]
        try:
            return Ensemble(members).eval(), Vocabularies.from_dict(ckpt["vocab"])
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
    return _build(ckpt, str(path)), Vocabularies.from_dict(ckpt["vocab"])


def _build(entry: dict, where: str) -> Transformer:
    model = Transformer(build_config(ModelConfig, entry["model_config"], where=f"{where}: model_config"))
    try:
        model.load_state_dict(entry["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{where}: weights do not fit the model config: {str(err).splitlines()[0]}") from None
    return model.eval()


def ensemble(paths: list[str | Path]) -> dict:
    """One checkpoint that translates with the models of several (which must share their
    vocabularies); an ensemble among them contributes its members."""
    if not paths:
        raise CheckpointError("no checkpoints to ensemble")
    ckpts = [load(p) for p in paths]
    members = []
    for p, c in zip(paths, ckpts):
        if c["vocab"] != ckpts[0]["vocab"]:
            raise CheckpointError(f"{p}: its vocabularies differ from those of {paths[0]}; an ensemble needs one vocabulary")
        members += c.get("members") or [{"model": c["model"], "model_config": c["model_config"]}]
    try:  # members whose ids disagree fail here, before anything is written
        check_members([build_config(ModelConfig, m["model_config"], where=f"member {i}: model_config")
                       for i, m in enumerate(members, 1)])
    except ValueError as err:
        raise CheckpointError(f"ensemble of {', '.join(map(str, paths))}: {err}") from None
    return {"format": FORMAT, "version": VERSION, "members": members, "vocab": ckpts[0]["vocab"],
            "ensembled_from": [str(p) for p in paths]}


def average(paths: list[str | Path]) -> dict:
    """Mean of the models of several checkpoints; the rest comes from the last one."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    ckpts = [load(p) for p in paths]
    base = ckpts[-1]
    for p, c in zip(paths, ckpts):
        if "members" in c:
            raise CheckpointError(f"{p}: is an ensemble of {len(c['members'])} models; average checkpoints of one model")
        if c["model_config"] != base["model_config"]:
            raise CheckpointError(f"{p}: model config differs from {paths[-1]}")
    averaged = {}
    for name, tensor in base["model"].items():
        if tensor.is_floating_point():
            averaged[name] = (sum(c["model"][name].double() for c in ckpts) / len(ckpts)).to(tensor.dtype)
        else:
            averaged[name] = tensor
    out = {k: v for k, v in base.items() if k not in ("optimizer", "scheduler", "rng", "rng_ranks", "trained_model")}
    out["model"] = averaged
    out["averaged_from"] = [str(p) for p in paths]
    return out
