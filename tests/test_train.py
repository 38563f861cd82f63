"""Training: loss falls, exact resume, Ctrl-C, atomic checkpoints, averaging, DDP, CLI errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infer.evaluate import score
from seq2seq.checkpoint import CheckpointError, average, load, save_atomic
from train.cli import train_main
from train.config import load_config
from train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# Two gloo processes under torchrun, and their environment.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TORCHRUN_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def tiny(run_dir, data, *overrides):
    fast = ["eval.search.max_len=8", "eval.search.beam_size=2", "optim.max_tokens=512", "vocab.size=400"]
    return load_config(TINY, [f"run_dir={run_dir}", f"data.path={data}", *fast, *overrides])


class Payload:
    """An arbitrary object: unpickling it could run code, so checkpoints may not hold one."""


def read_metrics(run_dir):
    import json

    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["optim.rdrop_alpha=0", "optim.rdrop_alpha=1"])
def test_loss_falls_and_the_run_dir_is_complete(tmp_path, multi30k_slice, objective):
    run = tmp_path / "run"
    summary = Trainer(tiny(run, multi30k_slice, "optim.max_steps=60", "eval.every=30", objective)).train()
    assert summary["reason"] == "max_steps" and summary["step"] == 60
    records = read_metrics(run)
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    valid_losses = [r["valid_loss"] for r in records if r["kind"] == "valid"]
    assert train_losses[-1] < train_losses[0] - 1.0
    assert valid_losses[-1] < valid_losses[0]
    for name in ("curves.png", "vocab.json", "checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/final.pt"):
        assert (run / name).exists(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _weights(run_dir):
    return load(Path(run_dir) / "checkpoints" / "last.pt")


def _assert_same_training_state(a, b):
    assert a["step"] == b["step"] and a["position"] == b["position"] and a["epoch"] == b["epoch"]
    for key in ("model", "trained_model"):  # trained_model: the raw weights beside an EMA
        assert (key in a) == (key in b)
        for name in a.get(key, {}):
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


@pytest.mark.parametrize("ema", ["optim.ema_decay=0", "optim.ema_decay=0.9"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, multi30k_slice, ema):
    # Small batches so the runs cross an epoch boundary; dropout on, so RNG state matters.
    common = ["optim.max_tokens=256", "eval.every=5", "data.max_len=24", ema]
    Trainer(tiny(tmp_path / "straight", multi30k_slice, "optim.max_steps=14", *common)).train()
    Trainer(tiny(tmp_path / "split", multi30k_slice, "optim.max_steps=7", *common)).train()
    resumed = Trainer(tiny(tmp_path / "split", multi30k_slice, "optim.max_steps=14", "resume=true", *common))
    assert resumed.step == 7
    resumed.train()
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert straight["epoch"] >= 1  # the resumed run crossed an epoch boundary
    _assert_same_training_state(straight, split)


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, multi30k_slice, monkeypatch):
    common = ["eval.every=100"]
    Trainer(tiny(tmp_path / "straight", multi30k_slice, "optim.max_steps=6", *common)).train()

    real_update = Trainer.update
    calls = {"n": 0}

    def update_then_ctrl_c(self, batches, n_tokens):
        loss = real_update(self, batches, n_tokens)
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # the real handler runs, as for a keyboard Ctrl-C
        return loss

    monkeypatch.setattr(Trainer, "update", update_then_ctrl_c)
    summary = Trainer(tiny(tmp_path / "split", multi30k_slice, "optim.max_steps=6", *common)).train()
    assert summary == {**summary, "reason": "interrupted", "step": 3}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(Trainer, "update", real_update)
    # The same command again (no resume=true) continues the run.
    Trainer(tiny(tmp_path / "split", multi30k_slice, "optim.max_steps=6", *common)).train()
    _assert_same_training_state(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))


def test_ema_is_the_moving_average_that_validation_and_checkpoints_use(tmp_path, multi30k_slice):
    trainer = Trainer(tiny(tmp_path / "run", multi30k_slice, "optim.ema_decay=0.9", "optim.max_steps=3", "eval.every=3"))
    assert trainer.eval_model is trainer.ema
    before = [p.detach().clone() for p in trainer.ema.parameters()]
    plan = trainer.plan(0)
    trainer.update(plan[:1], trainer.target_tokens(plan[:1]))
    decay = min(0.9, 2 / 11)  # the warm-up decay after one update
    for old, ema, new in zip(before, trainer.ema.parameters(), trainer.model.parameters()):
        assert torch.allclose(ema, decay * old + (1 - decay) * new, atol=1e-6)
    assert any(not torch.equal(e, m) for e, m in zip(trainer.ema.parameters(), trainer.model.parameters()))
    trainer.train()
    last = _weights(tmp_path / "run")
    for name, tensor in trainer.ema.state_dict().items():
        assert torch.equal(last["model"][name], tensor.cpu()), name
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(last["trained_model"][name], tensor.cpu()), name


def test_atomic_checkpoint_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    first = {"format": "seq2seq-checkpoint", "version": 1, "model": {"w": torch.ones(3)}}
    save_atomic(first, path)

    def crash_mid_write(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="No space"):
        save_atomic({**first, "model": {"w": torch.zeros(3)}}, path)
    assert torch.equal(load(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a readable checkpoint"), (b"PK\x03\x04 truncated", "not a readable checkpoint")],
)
def test_broken_checkpoints_are_named(tmp_path, content, message):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"broken\.pt: {message}"):
        load(path)


def test_other_format_version_and_foreign_pickles_are_refused(tmp_path):
    path = tmp_path / "v9.pt"
    torch.save({"format": "seq2seq-checkpoint", "version": 9}, path)
    with pytest.raises(CheckpointError, match="version 9"):
        load(path)
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="not a seq2seq checkpoint"):
        load(path)

    torch.save({"format": "seq2seq-checkpoint", "version": 1, "x": Payload()}, path)  # weights_only refuses it
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load(path)


def test_average_is_the_mean_of_the_weights(tmp_path):
    base = {"format": "seq2seq-checkpoint", "version": 1, "model_config": {"d_model": 4}}
    paths = []
    for i, value in enumerate([1.0, 2.0, 6.0]):
        paths.append(tmp_path / f"step_{i}.pt")
        save_atomic({**base, "model": {"w": torch.full((2,), value), "n": torch.tensor(i)}}, paths[-1])
    out = average(paths)
    assert torch.equal(out["model"]["w"], torch.full((2,), 3.0)) and out["model"]["n"] == 2


def test_a_finished_run_rerun_finishes_and_another_recipe_is_refused(tmp_path, multi30k_slice):
    Trainer(tiny(tmp_path / "run", multi30k_slice, "optim.max_steps=2", "eval.every=2")).train()
    final = (tmp_path / "run" / "checkpoints" / "final.pt").stat()
    again = Trainer(tiny(tmp_path / "run", multi30k_slice, "optim.max_steps=2", "eval.every=2"))
    assert again.step == 2 and again.train()["reason"] == "done"
    assert (tmp_path / "run" / "checkpoints" / "final.pt").stat().st_mtime_ns == final.st_mtime_ns
    with pytest.raises(CheckpointError, match=r"another recipe: optim.max_steps 2 -> 3; pass resume=true"):
        Trainer(tiny(tmp_path / "run", multi30k_slice, "optim.max_steps=3", "eval.every=2"))


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, multi30k_slice):
    assert train_main([str(TINY), "optim.lr=fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optim.lr: expected float, got 'fast'" in err
    assert train_main([str(TINY), f"data.path={tmp_path}", f"run_dir={tmp_path / 'r'}"]) == 2
    assert "train.de: no such file" in capsys.readouterr().err
    assert train_main([str(TINY), f"data.path={tmp_path / 'gone'}", f"run_dir={tmp_path / 'r'}"]) == 2
    assert capsys.readouterr().err.startswith(f"seq2seq-train: error: {TINY}: data.path: {tmp_path / 'gone'}: no such folder")


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_on_the_same_global_batch(tmp_path, multi30k_slice):
    """torchrun with 2 gloo processes (accum 1) == 1 process accumulating the same 2 batches."""
    common = [f"data.path={multi30k_slice}", "optim.max_steps=4", "eval.every=4", "model.dropout=0.0",
              "eval.search.max_len=4", "vocab.size=400", "optim.max_tokens=512"]
    ddp = subprocess.run(
        [*TORCHRUN, "-m", "train", str(TINY), f"run_dir={tmp_path / 'ddp'}", "--no-test", *common],
        env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    Trainer(load_config(TINY, [f"run_dir={tmp_path / 'single'}", "optim.accum_steps=2", *common])).train()
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "single")
    assert a["step"] == b["step"] == 4 and a["position"] == b["position"] == 8
    # Adam's first moment is a running mean of the gradients: it would show a wrongly scaled
    # or wrongly averaged gradient, which Adam's scale-invariant updates would hide.
    for key, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(state["exp_avg"], b["optimizer"]["state"][key]["exp_avg"], rtol=1e-3, atol=1e-7)
    # Weights agree to the learning-rate scale: Adam moves a near-zero gradient by ~lr
    # whichever sign float summation order gives it.
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=0, atol=2e-4)
    # bench/compare_runs.py, which reports such pairs of runs, finds their curves together.
    sys.path.insert(0, str(ROOT / "bench"))
    from compare_runs import compare

    curves = compare([tmp_path / "single", tmp_path / "ddp"])
    assert [r["step"] for r in curves["valid"]] == [4] and curves["loss"]
    assert curves["max_loss_difference"] < 1e-3 and curves["max_valid_loss_difference"] < 1e-3


@pytest.mark.slow
def test_train_benchmark_under_torchrun_times_the_global_batches_of_one_process_accumulating(multi30k_slice):
    """bench/train.py on 2 gloo processes: one JSON, from rank 0, of the same target tokens as
    one process taking both processes' batches (accum_steps=2): the scaling figure of issue 22
    compares the same work."""
    common = [str(ROOT / "bench" / "train.py"), str(TINY), f"data.path={multi30k_slice}", "vocab.size=400",
              "optim.max_tokens=512", "--updates", "3", "--warmup", "1"]
    two = subprocess.run([*TORCHRUN, *common], env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run([sys.executable, *common, "optim.accum_steps=2"], env=TORCHRUN_ENV, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-4000:]
    got, want = json.loads(two.stdout), json.loads(one.stdout)  # a second JSON would not parse
    assert (got["processes"], want["processes"]) == (2, 1)
    assert got["tgt_tokens"] == want["tgt_tokens"] > 0


def _torchrun(tmp_path, run: str, *overrides: str) -> list[str]:
    """The command line of a 2-process gloo run of the tiny recipe on the data slice."""
    return [*TORCHRUN, "-m", "train", str(TINY), f"run_dir={tmp_path / run}", "--no-test", "eval.search.max_len=4",
            "vocab.size=400", "optim.max_tokens=512", *overrides]



@pytest.mark.slow
def test_a_resumed_two_process_run_continues_exactly(tmp_path, multi30k_slice):
    """Each process draws its own dropout masks: a resume gives each its own RNG state back."""
    data = f"data.path={multi30k_slice}"
    straight = subprocess.run(_torchrun(tmp_path, "straight", data, "optim.max_steps=8", "eval.every=4"),
                              env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-4000:]
    for more in (["optim.max_steps=4"], ["optim.max_steps=8", "resume=true"]):  # resume=true: max_steps changed
        part = subprocess.run(_torchrun(tmp_path, "resumed", data, "eval.every=4", *more),
                              env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300)
        assert part.returncode == 0, part.stderr[-4000:]
    assert "from step 4" in part.stdout
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert len(a["rng_ranks"]) == 2 and not torch.equal(a["rng_ranks"][0]["torch"], a["rng_ranks"][1]["torch"])
    _assert_same_training_state(a, b)


@pytest.mark.slow
def test_killing_one_process_ends_the_run_with_one_line_and_the_same_command_continues(tmp_path, multi30k_slice):
    cmd = _torchrun(tmp_path, "run", f"data.path={multi30k_slice}", "optim.max_steps=150", "eval.every=10")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    run = subprocess.Popen(cmd, env=TORCHRUN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists() and run.poll() is None
        workers = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split()
        rank_1 = [p for p in workers if "RANK=1" in Path(f"/proc/{p}/environ").read_bytes().decode(errors="replace").split("\0")]
        assert len(rank_1) == 1
        os.kill(int(rank_1[0]), signal.SIGKILL)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode != 0
    ours = [line for line in err.splitlines() if "seq2seq-train: error:" in line]
    assert len(ours) == 1 and "process 0 of 2" in ours[0] and f"{last} holds the last checkpoint" in ours[0], err[-3000:]
    assert "[rank0]: Traceback" not in err
    again = subprocess.run(cmd, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "continuing the run" in again.stdout and _weights(tmp_path / "run")["step"] == 150


def test_patience_stops_when_bleu_stops_improving(tmp_path, multi30k_slice):
    """With no learning at all, validation BLEU never improves after the first validation."""
    cfg = tiny(tmp_path / "run", multi30k_slice, "optim.max_steps=50", "eval.every=1", "eval.patience=2",
               "optim.lr=1e-12", "optim.warmup_steps=0", "eval.keep_last=1")
    summary = Trainer(cfg).train()
    assert summary["reason"] == "patience" and summary["step"] == 3
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))] == ["step_0000003.pt"]


def test_average_cli(tmp_path, multi30k_slice, capsys):
    from train.cli import average_main

    Trainer(tiny(tmp_path / "run", multi30k_slice, "optim.max_steps=4", "eval.every=2", "eval.keep_last=5")).train()
    folder = tmp_path / "run" / "checkpoints"
    assert average_main([str(folder), "--last", "2", "-o", str(tmp_path / "avg.pt")]) == 0
    a, b, avg = (load(p)["model"] for p in [folder / "step_0000002.pt", folder / "step_0000004.pt", tmp_path / "avg.pt"])
    name = "tgt_embed.tokens.weight"
    torch.testing.assert_close(avg[name], (a[name] + b[name]) / 2)
    assert average_main([str(tmp_path / "nothing.pt"), "-o", str(tmp_path / "x.pt")]) == 2
    assert "nothing.pt: no such checkpoint" in capsys.readouterr().err


def test_final_checkpoint_is_the_better_of_best_and_averaged_on_validation(tmp_path, multi30k_slice):
    run = tmp_path / "run"
    Trainer(tiny(run, multi30k_slice, "optim.max_steps=40", "eval.every=10", "eval.keep_last=3",
                    "eval.average_last=3")).train()
    records = read_metrics(run)
    best = max(r["bleu"] for r in records if r["kind"] == "valid")
    (averaged,) = [r for r in records if r["kind"] == "valid_averaged"]
    assert averaged["averaged"] == 3
    chosen = "averaged.pt" if averaged["bleu"] > best else "best.pt"
    ckpt = run / "checkpoints"
    assert (ckpt / "final.pt").stat().st_ino == (ckpt / chosen).stat().st_ino


def test_train_command_ends_with_the_test_score_and_signature(tmp_path, multi30k_slice, capsys):
    run = tmp_path / "run"
    args = [str(TINY), f"run_dir={run}", f"data.path={multi30k_slice}", "optim.max_steps=4", "eval.every=4",
            "eval.search.max_len=8", "vocab.size=400"]
    assert train_main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith("test_2016_flickr (") and "final.pt): BLEU" in out[-3]
    assert out[-2].startswith("sacrebleu signature: nrefs:1|case:mixed|")
    hyps = (run / "test_2016_flickr.en.hyp").read_text(encoding="utf-8").split("\n")
    assert len(hyps) == 21 and hyps[-1] == ""  # 20 test lines, each ended by a newline
    refs = (multi30k_slice / "test_2016_flickr.en").read_text(encoding="utf-8").splitlines()
    lower = score(hyps[:-1], [refs], lowercase=True)
    assert out[-1] == f"lowercased: BLEU {lower['bleu']:.2f}  chrF {lower['chrf']:.2f}  ({lower['bleu_signature']})"
    assert "case:lc" in out[-1]
    valid = [r for r in read_metrics(run) if r["kind"] == "valid"]
    assert valid and all("bleu_lc" in r and "chrf_lc" in r for r in valid)


@pytest.mark.slow
def test_members_train_with_their_own_seeds_and_translate_as_their_ensemble(tmp_path, multi30k_slice, capsys):
    from infer.translator import Translator
    from seq2seq.data import DataConfig, load_split

    run = tmp_path / "run"
    args = [str(TINY), f"run_dir={run}", f"data.path={multi30k_slice}", "members=2", "optim.max_steps=6", "eval.every=6",
            "eval.search.max_len=8", "vocab.size=400"]
    assert train_main(args) == 0
    final = load(run / "checkpoints" / "final.pt")
    singles = [load(run / f"member_{k}" / "checkpoints" / "final.pt") for k in (1, 2)]
    assert [s["train_config"]["seed"] for s in singles] == [1, 2]
    assert not torch.equal(singles[0]["model"]["tgt_embed.tokens.weight"], singles[1]["model"]["tgt_embed.tokens.weight"])
    for member, single in zip(final["members"], singles):
        assert member["model_config"] == single["model_config"]
        assert all(torch.equal(member["model"][k], v) for k, v in single["model"].items())
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (record,) = read_metrics(run)
    assert record["kind"] == "valid_ensemble" and record["members"] == 2
    valid = load_split(DataConfig(path=str(multi30k_slice)), "val")
    search = load_config(TINY, ["eval.search.max_len=8"]).eval.search
    hyps = Translator.from_checkpoint(run / "checkpoints" / "final.pt").search(valid.src, search)
    assert record["bleu"] == score([h[0][0] for h in hyps], [valid.tgt])["bleu"]
    assert "final.pt): BLEU" in capsys.readouterr().out.splitlines()[-3]
    # The same command again finishes at once; another recipe is refused before any member starts.
    assert train_main(args) == 0
    assert "final.pt): BLEU" in capsys.readouterr().out
    assert train_main([*args, "optim.lr=0.01"]) == 2
    assert capsys.readouterr().err.strip() == (f"seq2seq-train: error: {run}/member_1/checkpoints/last.pt: run_dir holds"
                                               " a run of another recipe: optim.lr 0.003 -> 0.01; pass resume=true to"
                                               " continue it with this one, or choose another run_dir")
    # A member that fails stops the run with one line naming its log and its last words.
    assert train_main([*args, f"run_dir={tmp_path / 'bad'}", f"data.path={tmp_path / 'missing'}"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"seq2seq-train: error: {tmp_path / 'bad'}/member_1/train.log: member training failed (exit 2): ")
    assert "missing" in last


def test_progress_in_a_log_file_is_plain_lines(capsys):
    """Where stderr is no terminal (pytest captures it), no bar frames: a line every 100 updates."""
    from train.progress import Progress

    records = []
    progress = Progress(total=250, initial=0, enabled=True, record=records.append)
    for step in range(1, 251):
        progress.update(step, 0, 2.0, 4, 1e-3)
    progress.close()
    err = capsys.readouterr().err
    assert "\r" not in err and "upd/s" not in err
    assert [line.split(":")[0] for line in err.splitlines()] == ["step 1/250", "step 100/250", "step 200/250"]
    assert len(records) == 26 and records[-1]["loss"] == 0.5
