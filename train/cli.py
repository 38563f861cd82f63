"""Command lines: seq2seq-train (also `python -m train`, and under torchrun), seq2seq-average and seq2seq-ensemble."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from infer.cli import OneLineParser
from infer.evaluate import score
from infer.translator import Translator
from seq2seq.checkpoint import CheckpointError, average, ensemble, save_atomic
from seq2seq.config import ConfigError
from seq2seq.data import DataError, load_split
from train import distributed
from train.config import TrainConfig, in_recipe, load_config
from train.progress import best_translations

USER_ERRORS = (ConfigError, DataError, CheckpointError, ValueError, OSError)  # OSError covers a failed member


class Stopped(Exception):
    """SIGTERM, which torchrun sends every process of a run when one of them fails."""


def _on_sigterm(signum, frame):
    raise Stopped("stopped by SIGTERM (torchrun stops every process when one fails)")


def _peer_failure(err: BaseException, run_dir: Path | None) -> str:
    """One line for a process of a torchrun run whose run ended elsewhere."""
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    what = str(err) if isinstance(err, Stopped) else "lost the connection to another process, which stopped"
    last = run_dir / "checkpoints" / "last.pt" if run_dir is not None else None
    if last is not None and last.exists():
        hint = f"{last} holds the last checkpoint: run the same command to continue from it"
    else:
        hint = "no checkpoint was written yet: run the same command to start again"
    return f"seq2seq-train: error: process {rank} of {world} {what}; {hint}"


def _fail(prog: str, err: BaseException, debug: bool) -> int:
    if debug:
        raise err
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def evaluate_on_test(cfg: TrainConfig, checkpoint: Path, device) -> tuple[dict, dict]:
    """Translate the test split with a checkpoint and score it, cased and lowercased."""
    translator = Translator.from_checkpoint(checkpoint, device=str(device))
    test = load_split(cfg.data, cfg.data.test)
    hyps = best_translations(translator, test.src, cfg.eval.search, cfg.eval.max_tokens, cfg.data.test)
    out = Path(cfg.run_dir) / f"{cfg.data.test}.{cfg.data.tgt_lang}.hyp"
    out.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return score(hyps, [test.tgt]), score(hyps, [test.tgt], lowercase=True, with_ter=False)  # TER ignores case anyway


def train_main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="seq2seq-train", description="Train a translation model from a YAML recipe.",
        epilog="Overrides: dotted keys of the recipe, e.g. optim.max_steps=2000 model.d_model=256 resume=true",
    )
    parser.add_argument("config", help="YAML recipe (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--no-test", action="store_true", help="skip scoring the test split at the end")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    args = parser.parse_intermixed_args(argv)  # flags may stand among the overrides
    from train.trainer import Trainer  # deferred: argument errors answer before torch loads

    env = cfg = None
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if under_torchrun:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.members > 1:
            return _train_members(cfg, args.no_test)
        trainer = Trainer(cfg)
        env = trainer.env
        summary = trainer.train()
        if env.is_main and summary["reason"] != "interrupted" and cfg.data.test and not args.no_test:
            _print_test(cfg, trainer.ckpt_dir / "final.pt", trainer.device)
        distributed.barrier(env)  # no process tears down its connections while another still uses them
        return 130 if summary["reason"] == "interrupted" else 0
    except USER_ERRORS as err:
        return _fail("seq2seq-train", in_recipe(args.config, err), args.debug)
    except (Stopped, RuntimeError) as err:
        if args.debug or not under_torchrun or not (isinstance(err, Stopped) or distributed.lost_peer(err)):
            raise
        print(_peer_failure(err, Path(cfg.run_dir) if cfg is not None else None), file=sys.stderr)
        return 1
    finally:
        if under_torchrun:  # the run is over for this process: a late SIGTERM has nothing to stop
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if env is not None:
            distributed.shutdown(env)


def _train_members(cfg: TrainConfig, no_test: bool) -> int:
    from train.members import train_members
    from train.trainer import pick_device

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("members > 1 starts its own processes: run it without torchrun")
    device = pick_device(cfg.device, 0)
    try:
        train_members(cfg, device.type)
    except KeyboardInterrupt:
        print("interrupted: the members saved their checkpoints; continue with resume=true", file=sys.stderr)
        return 130
    if cfg.data.test and not no_test:
        _print_test(cfg, Path(cfg.run_dir) / "checkpoints" / "final.pt", device)
    return 0


def _print_test(cfg: TrainConfig, final: Path, device) -> None:
    cased, lower = evaluate_on_test(cfg, final, device)
    print(f"{cfg.data.test} ({final}): BLEU {cased['bleu']:.2f}  chrF {cased['chrf']:.2f}  TER {cased['ter']:.2f}")
    print(f"sacrebleu signature: {cased['bleu_signature']}")
    print(f"lowercased: BLEU {lower['bleu']:.2f}  chrF {lower['chrf']:.2f}  ({lower['bleu_signature']})")


def average_main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="seq2seq-average", description="Average the weights of checkpoints.")
    parser.add_argument("inputs", nargs="+", help="checkpoint files, or one run's checkpoints/ folder")
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.add_argument("--last", type=int, default=0, help="with a folder: average its last N step checkpoints")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    try:
        paths = [Path(p) for p in args.inputs]
        if len(paths) == 1 and paths[0].is_dir():
            paths = sorted(paths[0].glob("step_*.pt"))
            if not paths:
                raise CheckpointError(f"{args.inputs[0]}: no step_*.pt checkpoints in this folder")
            paths = paths[-args.last :] if args.last else paths
        save_atomic(average(paths), args.output)
        print(f"averaged {len(paths)} checkpoints into {args.output}")
        return 0
    except USER_ERRORS as err:
        return _fail("seq2seq-average", err, args.debug)


def ensemble_main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="seq2seq-ensemble", description="Combine checkpoints into one that translates with all their models.",
                           epilog="The models must share their vocabularies (e.g. the same recipe with different seeds).")
    parser.add_argument("inputs", nargs="+", help="checkpoint files (an ensemble among them adds its members)")
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    try:
        combined = ensemble([Path(p) for p in args.inputs])
        save_atomic(combined, args.output)
        print(f"wrote {args.output}: an ensemble of {len(combined['members'])} models")
        return 0
    except USER_ERRORS as err:
        return _fail("seq2seq-ensemble", err, args.debug)
