"""The training loop: teacher forcing, label smoothing, Adam with a warmup schedule,
gradient accumulation and clipping, validation with BLEU, checkpoints, exact resume, DDP.

Every process builds the same batch plan from the seed; an update takes world_size *
accum_steps batches of it, and each process runs its own accum_steps of them. Losses are
summed over target tokens and divided by the update's total target tokens, so an update is
the same whatever the number of processes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from infer.evaluate import score
from infer.translator import Translator
from seq2seq import speed
from seq2seq.batching import batch_plan
from seq2seq.checkpoint import CheckpointError, average, inference_state, load, save_atomic
from seq2seq.data import load_split
from seq2seq.model import Transformer
from train import distributed
from train.config import TrainConfig, to_dict
from train.data import encode, make_batch
from train.loss import cross_entropy_sum, objective
from train.plot import plot_metrics
from train.prepare import ensure_prepared
from train.progress import Progress, best_translations, duration
from train.schedule import make_scheduler


ESTIMATE_AFTER = 30  # updates before the run says how long the rest will take, timing all but the first
ESTIMATE_SKIP = 10  # ... these, slower while kernels are picked and memory allocated


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class Trainer:
    def __init__(self, cfg: TrainConfig, log=tqdm.write):  # tqdm.write keeps messages off the bar
        self.cfg, self.log = cfg, log
        kind = pick_device(cfg.device, 0).type
        self.env = distributed.init(kind)
        self.device = pick_device(cfg.device, self.env.local_rank)
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        resume = self._resume_checkpoint()

        prepared = ensure_prepared(cfg.data, cfg.vocab, cfg.model.eos_id, self._info)
        self.vocab = prepared.vocab
        if resume and resume["vocab"] != prepared.vocab.to_dict():
            raise CheckpointError(f"{self.ckpt_dir / 'last.pt'}: its vocabulary differs from the prepared data's "
                                  f"({prepared.folder}); was the training data changed?")
        self._keep_vocab(prepared)
        self.model_cfg = dataclasses.replace(
            cfg.model, src_vocab_size=self.vocab.src.vocab_size, tgt_vocab_size=self.vocab.tgt.vocab_size
        )
        self.train_sides = (prepared.src, prepared.tgt)
        self.valid_raw = load_split(cfg.data, cfg.data.valid)
        self.valid_data = encode(self.vocab, self.valid_raw, self.model_cfg.eos_id, self.model_cfg.max_positions - 1)
        meta = prepared.meta
        self._info(f"train: {meta['read']} pairs from {meta['name']}, kept {meta['pairs']}, dropped {meta['dropped']}")
        self._info(f"valid: {len(self.valid_raw)} pairs from {self.valid_raw.name}")

        torch.manual_seed(cfg.seed)
        self.model = speed.for_training(Transformer(self.model_cfg).to(self.device))
        self.ddp = DistributedDataParallel(self.model) if self.env.enabled else None
        self.objective = speed.compiled(objective) if cfg.compile else objective
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay,
            fused=self.device.type == "cuda",  # one kernel per step instead of one per tensor group: the loop is host-bound
        )
        self.scheduler = make_scheduler(self.optimizer, o.schedule, o.warmup_steps, o.max_steps)
        # The weights that are validated, checkpointed for inference and averaged: the trained
        # ones, or with optim.ema_decay their moving average, kept beside them in fp32.
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if o.ema_decay > 0 else None
        self.eval_model = self.ema if self.ema is not None else self.model
        self.step, self.epoch, self.position = 0, 0, 0
        self.best_bleu, self.bad_validations = -1.0, 0
        self._stop_requested = False
        if resume:
            self._restore(resume)
        self._info(f"model: {sum(p.numel() for p in self.model.parameters()) / 1e6:.1f}M parameters on {self.device}"
                   f"{f' x {self.env.world_size} processes' if self.env.enabled else ''}")

    # -- set-up -------------------------------------------------------------------------------

    def _info(self, message: str) -> None:
        if self.env.is_main:
            self.log(message)

    def _resume_checkpoint(self) -> dict | None:
        """last.pt to continue from: with resume=true, or when it is a run of this same recipe
        (re-running a command continues it); None for a fresh run."""
        last = self.ckpt_dir / "last.pt"
        if not last.exists():
            if self.cfg.resume:
                raise CheckpointError(f"{last}: no checkpoint to resume from")
            return None
        ckpt = load(last, map_location=self.device)
        if not self.cfg.resume:
            refuse_other_recipe(last, ckpt.get("train_config", {}), self.cfg)
        return ckpt

    def _keep_vocab(self, prepared) -> None:
        """run_dir/vocab.json: the vocabularies beside the run, for the user (checkpoints carry them too)."""
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.run_dir / "vocab.json.tmp"
            shutil.copyfile(prepared.folder / "vocab.json", tmp)
            os.replace(tmp, self.run_dir / "vocab.json")

    # -- checkpoints --------------------------------------------------------------------------

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _state(self, rng_ranks: list[dict]) -> dict:
        """The checkpoint; rng_ranks: every process's RNG states, in rank order (each draws its
        own dropout masks, so a resumed run continues exactly only if each gets its own back)."""
        trained = {"trained_model": self.model.state_dict()} if self.ema is not None else {}
        return {
            **inference_state(self.eval_model, self.vocab), **trained, "train_config": to_dict(self.cfg),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "position": self.position, "rng_ranks": rng_ranks,
            "best_bleu": self.best_bleu, "bad_validations": self.bad_validations,
        }

    def _restore(self, ckpt: dict) -> None:
        # "model" holds the EMA weights when the run had one; a run that turns EMA on starts it there.
        self.model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.position = ckpt["step"], ckpt["epoch"], ckpt["position"]
        self.best_bleu, self.bad_validations = ckpt["best_bleu"], ckpt["bad_validations"]
        ranks = ckpt["rng_ranks"] if "rng_ranks" in ckpt else [ckpt["rng"]]  # "rng": checkpoints before rng_ranks
        rng = ranks[self.env.rank] if len(ranks) == self.env.world_size else ranks[0]  # another process count: rank 0's
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self._info(f"continuing the run in {self.run_dir} from step {self.step} (epoch {self.epoch}, batch {self.position})")

    def save_checkpoint(self, is_best: bool = False) -> None:
        """step_N.pt, with last.pt (and best.pt) as links to it; older step files pruned.
        Every process calls it (it gathers their RNG states); rank 0 writes."""
        rng_ranks = distributed.gather(self.env, self._rng_state())
        if not self.env.is_main:
            return
        path = self.ckpt_dir / f"step_{self.step:07d}.pt"
        save_atomic(self._state(rng_ranks), path)
        _link_atomic(path, self.ckpt_dir / "last.pt")
        if is_best:
            _link_atomic(path, self.ckpt_dir / "best.pt")
        for old in self.step_checkpoints()[: -self.cfg.eval.keep_last or None]:
            old.unlink()

    def step_checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step_*.pt"))

    # -- one update ---------------------------------------------------------------------------

    def plan(self, epoch: int) -> list[list[int]]:
        src, tgt = self.train_sides
        return batch_plan(src.lengths, tgt.lengths, self.cfg.optim.max_tokens, self.cfg.seed, epoch)

    def target_tokens(self, batches: list[list[int]]) -> int:
        """Target tokens (EOS included) in these batches: what an update's loss is divided by."""
        return int(sum(self.train_sides[1].lengths[b].sum() for b in batches))

    def update(self, batches: list[list[int]], n_tokens: int) -> torch.Tensor:
        """One optimizer step over this process's micro-batches; returns the summed cross-entropy
        as a device tensor, so that nothing here waits for the GPU."""
        module = self.ddp or self.model
        module.train()
        mc, world = self.model_cfg, self.env.world_size
        amp = torch.bfloat16 if self.device.type == "cuda" else None
        total = torch.zeros((), device=self.device)
        for j, indices in enumerate(batches):
            src, tgt_in, tgt_out = (self._to_device(t) for t in make_batch(*self.train_sides, indices, mc.pad_id, mc.bos_id))
            # Only the last micro-batch of an update all-reduces gradients.
            sync = self.ddp.no_sync() if self.ddp is not None and j < len(batches) - 1 else nullcontext()
            with sync, speed.training_attention(self.device):
                loss, ce = self.objective(module, src, tgt_in, tgt_out, mc.pad_id, self.cfg.optim.label_smoothing,
                                          self.cfg.optim.rdrop_alpha, amp)
                # DDP averages over processes; scaling by world makes the result sum / n_tokens.
                (loss * world / n_tokens).backward()
            total += ce
        if self.cfg.optim.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.update_ema(self.step + 1)
        return total

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        # From pageable memory a copy waits for the GPU to drain; from pinned memory it queues.
        if self.device.type != "cuda":
            return batch
        return batch.pin_memory().to(self.device, non_blocking=True)

    @torch.no_grad()
    def update_ema(self, updates: int) -> None:
        """ema += (1 - d) * (weights - ema), with d = min(ema_decay, (1 + n) / (10 + n)) after n
        updates, so early averages are not dominated by the random initialisation."""
        d = min(self.cfg.optim.ema_decay, (1 + updates) / (10 + updates))
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - d)

    # -- validation ---------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation NLL per target token, and BLEU of the project's cached beam search."""
        model = self.eval_model.eval()
        mc = self.model_cfg
        sides = self.valid_data.sides
        nll, n_tokens = 0.0, 0
        for indices in batch_plan(sides[0].lengths, sides[1].lengths, self.cfg.optim.max_tokens, 0, 0, shuffle=False):
            src, tgt_in, tgt_out = (t.to(self.device) for t in make_batch(*sides, indices, mc.pad_id, mc.bos_id))
            logits = model(src, tgt_in)
            nll += cross_entropy_sum(logits, tgt_out, mc.pad_id, 0.0).item()
            n_tokens += int((tgt_out != mc.pad_id).sum())
        # The same path as seq2seq-translate, so validation BLEU is what users will get.
        translator = Translator(model, self.vocab, str(self.device), "fp32")  # the weights being trained, left as they are
        ev = self.cfg.eval
        hyps = best_translations(translator, self.valid_raw.src, ev.search, ev.max_tokens, "validation")
        scores = score(hyps, [self.valid_raw.tgt])
        lower = score(hyps, [self.valid_raw.tgt], lowercase=True, with_ter=False)  # comparable to papers that lowercase; TER ignores case anyway
        return {"valid_loss": nll / n_tokens, "valid_ppl": math.exp(min(nll / n_tokens, 50)), **scores,
                "bleu_lc": lower["bleu"], "chrf_lc": lower["chrf"]}

    def _validate_and_save(self) -> bool:
        """Validate on rank 0, checkpoint, and return whether patience ran out (on all ranks)."""
        stop = is_best = False
        if self.env.is_main:
            start = time.perf_counter()
            metrics = self.validate()
            is_best = metrics["bleu"] > self.best_bleu
            if is_best:
                self.best_bleu, self.bad_validations = metrics["bleu"], 0
            else:
                self.bad_validations += 1
            self._append_metrics({"kind": "valid", "step": self.step, **metrics, "best_bleu": self.best_bleu})
            self.log(f"step {self.step}: valid loss {metrics['valid_loss']:.3f} ppl {metrics['valid_ppl']:.2f} "
                     f"BLEU {metrics['bleu']:.2f} chrF {metrics['chrf']:.2f} (best {self.best_bleu:.2f}; "
                     f"{duration(time.perf_counter() - start)})")
        self.save_checkpoint(is_best)
        if self.env.is_main:
            plot_metrics(self.metrics_path, self.run_dir / "curves.png")
            stop = 0 < self.cfg.eval.patience <= self.bad_validations
            if stop:
                self.log(f"early stop: no better validation BLEU in {self.bad_validations} validations")
        return distributed.broadcast(self.env, stop)

    def _choose_final(self) -> None:
        """final.pt: best.pt, or the average of the last step checkpoints if it scores a higher
        validation BLEU. Chosen on validation data only; the test split is for final.pt."""
        final = self.ckpt_dir / "best.pt"
        n = self.cfg.eval.average_last
        if n > 1 and len(self.step_checkpoints()) >= 2:
            averaged = average(self.step_checkpoints()[-n:])
            save_atomic(averaged, self.ckpt_dir / "averaged.pt")
            self.eval_model.load_state_dict(averaged["model"])  # training is over: the weights are free
            metrics = self.validate()
            self._append_metrics({"kind": "valid_averaged", "step": self.step, "averaged": len(averaged["averaged_from"]), **metrics})
            self.log(f"averaged last {len(averaged['averaged_from'])} checkpoints: valid BLEU {metrics['bleu']:.2f}"
                     f" (best single {self.best_bleu:.2f})")
            if metrics["bleu"] > self.best_bleu:
                final = self.ckpt_dir / "averaged.pt"
        _link_atomic(final, self.ckpt_dir / "final.pt")
        self.log(f"final checkpoint: {final.name}")

    def _append_metrics(self, record: dict) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop -----------------------------------------------------------------------------

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        self._info("\ninterrupt: finishing this update, then saving a resumable checkpoint (Ctrl-C again to abort)")

    def _interrupted(self) -> bool:
        return distributed.all_sum(self.env, float(self._stop_requested), self.device) > 0

    def _estimate(self, per_update: float) -> None:
        """Say roughly how long the rest of the run takes, at per_update seconds an update."""
        o, every = self.cfg.optim, self.cfg.eval.every
        left = o.max_steps - self.step
        validations = o.max_steps // every - self.step // every + (o.max_steps % every > 0)
        self._info(f"estimate: about {duration(per_update * left)} for the other {left} updates at this "
                   f"speed, plus {validations} validation{'s' * (validations != 1)} ({len(self.valid_raw.src):,} sentences "
                   "each) and the test set")

    def train(self) -> dict:
        """Train until max_steps, max_epochs, patience or Ctrl-C; returns a summary."""
        o, per_update = self.cfg.optim, self.env.world_size * self.cfg.optim.accum_steps
        if self.step >= o.max_steps and (self.ckpt_dir / "final.pt").exists():
            self._info(f"already trained to step {self.step}: {self.ckpt_dir / 'final.pt'}")
            return {"reason": "done", "step": self.step, "epoch": self.epoch, "best_bleu": self.best_bleu}
        previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        plan = self.plan(self.epoch)
        progress = Progress(o.max_steps, self.step, self.env.is_main, self._append_metrics,
                            reduce=lambda loss: distributed.all_sum(self.env, float(loss), self.device))
        reason, validated_at = "max_steps", self.step
        first, started = self.step, time.perf_counter()
        try:
            while self.step < o.max_steps:
                if self.position + per_update > len(plan):  # epoch over; a short tail is left out
                    self.epoch, self.position = self.epoch + 1, 0
                    if o.max_epochs and self.epoch >= o.max_epochs:
                        reason = "max_epochs"
                        break
                    plan = self.plan(self.epoch)
                batches = plan[self.position : self.position + per_update]
                n_tokens = self.target_tokens(batches)
                mine = batches[self.env.rank * o.accum_steps : (self.env.rank + 1) * o.accum_steps]
                loss_sum = self.update(mine, n_tokens)
                self.step, self.position = self.step + 1, self.position + per_update
                progress.update(self.step, self.epoch, loss_sum, n_tokens, self.scheduler.get_last_lr()[0])
                if self.step == first + ESTIMATE_SKIP:
                    started = time.perf_counter()
                if self.step == first + ESTIMATE_AFTER and self.step < o.max_steps:
                    self._estimate((time.perf_counter() - started) / (ESTIMATE_AFTER - ESTIMATE_SKIP))
                if self.step % self.cfg.eval.every == 0:
                    validated_at, paused = self.step, time.perf_counter()
                    if self._validate_and_save():
                        reason = "patience"
                        break
                    progress.restart_window()
                    started += time.perf_counter() - paused  # the estimate times updates only
                if self._interrupted():
                    reason = "interrupted"
                    break
            if validated_at != self.step and reason != "interrupted":
                self._validate_and_save()
        finally:
            progress.close()
            signal.signal(signal.SIGINT, previous_handler)
        if reason == "interrupted":
            self.save_checkpoint()
            self._info(f"saved {self.ckpt_dir / 'last.pt'} at step {self.step}; continue with resume=true")
        if self.env.is_main:
            if reason != "interrupted":
                self._choose_final()
            plot_metrics(self.metrics_path, self.run_dir / "curves.png")
        return {"reason": reason, "step": self.step, "epoch": self.epoch, "best_bleu": self.best_bleu}


# Keys that change how a run runs, not what it trains: a re-run may change them.
RUN_ONLY = ("resume", "compile")


def recipe_differences(saved: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """Dotted key -> (saved value, cfg's value) wherever a run's saved recipe and cfg differ
    (RUN_ONLY keys aside)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved), flat(to_dict(cfg))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if k not in RUN_ONLY and a.get(k) != b.get(k)}


def refuse_other_recipe(last: Path, saved: dict, cfg: TrainConfig) -> None:
    """Raise unless the run whose last.pt this is was trained with cfg's recipe."""
    differ = recipe_differences(saved, cfg)
    if differ:
        shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in list(differ.items())[:3])
        shown += " ..." if len(differ) > 3 else ""
        raise CheckpointError(f"{last}: run_dir holds a run of another recipe: {shown}; pass resume=true to continue "
                              "it with this one, or choose another run_dir")


def _link_atomic(target: Path, link: Path) -> None:
    """Make link name the same file as target, replacing any old link atomically."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
    except OSError:  # no hard links on this file system: copy instead
        save_atomic(torch.load(target, weights_only=True), link)
        return
    os.replace(tmp, link)
