"""seq2seq-translate and seq2seq-evaluate with a tiny checkpoint trained in the test run."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infer import Translator
from infer.cli import evaluate_main, translate_main
from tests.conftest import train_tiny

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-len-b", "4", "--max-len", "12", "-b", "2", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, multi30k_slice) -> Path:
    return train_tiny(tmp_path_factory.mktemp("cli") / "run", multi30k_slice, "model.max_positions=96", "data.max_len=64")


def run_translate(args, stdin=b""):
    out, err = io.StringIO(), io.StringIO()
    old_err, sys.stderr = sys.stderr, err
    try:
        code = translate_main([str(a) for a in args], stdin=io.BytesIO(stdin), stdout=out)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    finally:
        sys.stderr = old_err
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def mixed_input(multi30k_slice) -> list[str]:
    """Real sentences with empty lines and one line longer than the model's 96 positions."""
    real = (multi30k_slice / "val.de").read_text(encoding="utf-8").splitlines()[:6]
    return [real[0], "", real[1], " ".join(real * 3), real[2], "", "", real[3]]


def test_file_stdin_and_output_file_agree_line_for_line(checkpoint, mixed_input, tmp_path):
    src = tmp_path / "in.de"
    src.write_text("\n".join(mixed_input) + "\n", encoding="utf-8")
    code, from_file, err = run_translate([checkpoint, src, *FAST])
    assert code == 0, err
    lines = from_file.split("\n")[:-1]
    assert len(lines) == len(mixed_input)
    assert all(out == "" for inp, out in zip(mixed_input, lines) if inp == "")
    assert err.count("warning") == 1 and f"{src}:4:" in err  # the over-long line, named once
    code, from_stdin, _ = run_translate([checkpoint, *FAST], stdin=src.read_bytes())
    assert code == 0 and from_stdin == from_file
    out = tmp_path / "out.en"
    assert run_translate([checkpoint, src, "-o", out, *FAST])[0] == 0
    assert out.read_text(encoding="utf-8") == from_file


def test_order_is_restored_after_length_sorting(checkpoint, mixed_input, tmp_path):
    t = Translator.from_checkpoint(checkpoint)
    kw = dict(beam_size=2, max_len_b=4, max_len=12)
    forward = t.translate(mixed_input, **kw)
    assert t.translate(mixed_input[::-1], **kw) == forward[::-1]
    assert [t.translate([line], **kw)[0] for line in mixed_input] == forward


def test_several_files_and_a_file_without_final_newline(checkpoint, tmp_path):
    a, b = tmp_path / "a.de", tmp_path / "b.de"
    a.write_text("Ein Hund.\nZwei Katzen.\n", encoding="utf-8")
    b.write_text("Ein Mann\n\nläuft", encoding="utf-8")  # no final newline: still three lines
    code, out, _ = run_translate([checkpoint, a, b, *FAST])
    assert code == 0 and out.count("\n") == 5


def test_n_best_is_tsv_with_ranked_scores(checkpoint, tmp_path):
    src = tmp_path / "in.de"
    src.write_text("Ein Hund läuft.\n\nZwei Männer.\n", encoding="utf-8")
    code, out, _ = run_translate([checkpoint, src, "--n-best", "3", "-b", "3", "--max-len-b", "4", "--quiet"])
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and all(len(r) == 4 for r in rows)
    by_line = {}
    for line_no, rank, score, _text in rows:
        by_line.setdefault(int(line_no), []).append((int(rank), float(score)))
    assert sorted(by_line) == [1, 2, 3] and len(by_line[2]) == 1  # an empty line: one empty row
    for line_no in (1, 3):
        ranks, scores = zip(*by_line[line_no])
        assert ranks == (1, 2, 3) and list(scores) == sorted(scores, reverse=True)


def test_translator_api_n_best(checkpoint):
    t = Translator.from_checkpoint(checkpoint)
    (nbest,) = t.translate(["Ein Hund läuft."], beam_size=3, n_best=2, max_len_b=4)
    assert len(nbest) == 2 and all(isinstance(text, str) and isinstance(s, float) for text, s in nbest)


def test_interactive_answers_line_by_line(checkpoint):
    code, out, _ = run_translate([checkpoint, "-i", *FAST], stdin="Ein Hund.\n\nZwei Katzen.\n".encode())
    assert code == 0 and out.count("\n") == 3 and out.split("\n")[1] == ""
    code, out, err = run_translate([checkpoint, "-i", *FAST], stdin=b"Ein Hund.\nZwei \xff Katzen.\n")
    assert code == 2 and out.count("\n") == 1  # the first answer was already out
    _one_line_error(err, "<stdin>:2: invalid UTF-8")


def test_evaluate_matches_sacrebleu(tmp_path, multi30k_slice):
    refs = (multi30k_slice / "val.en").read_text(encoding="utf-8").splitlines()
    hyps = [" ".join(r.split()[::-1]) if i % 3 == 0 else r for i, r in enumerate(refs)]
    (tmp_path / "hyp").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (tmp_path / "ref").write_text("\n".join(refs) + "\n", encoding="utf-8")
    out = io.StringIO()
    assert evaluate_main([str(tmp_path / "hyp"), str(tmp_path / "ref"), "--json"], stdout=out) == 0
    got = json.loads(out.getvalue())
    assert got["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    assert got["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)
    assert got["ter"] == round(sacrebleu.corpus_ter(hyps, [refs]).score, 2)
    assert got["bleu_signature"].startswith("nrefs:1|case:mixed")
    out = io.StringIO()
    assert evaluate_main([str(tmp_path / "hyp"), str(tmp_path / "ref"), "--lowercase"], stdout=out) == 0
    assert "case:lc" in out.getvalue() and out.getvalue().startswith("BLEU = ")


def test_evaluate_translates_and_scores_in_one_go(checkpoint, tmp_path, multi30k_slice):
    out = io.StringIO()
    code = evaluate_main([str(multi30k_slice / "val.en"), "--checkpoint", str(checkpoint), "--source",
                          str(multi30k_slice / "val.de"), "--json", "-o", str(tmp_path / "hyp"), *FAST[:-1]], stdout=out)
    assert code == 0 and "bleu" in json.loads(out.getvalue())
    assert len((tmp_path / "hyp").read_text(encoding="utf-8").splitlines()) == 20


def test_gzipped_inputs_read_as_their_text(checkpoint, multi30k_slice, tmp_path):
    """translate and evaluate read .gz files as the text inside; a broken one is named."""
    import gzip

    src, ref = multi30k_slice / "val.de", multi30k_slice / "val.en"
    for path in (src, ref):
        (tmp_path / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
    code, plain, _ = run_translate([checkpoint, src, *FAST])
    code_gz, zipped, _ = run_translate([checkpoint, tmp_path / "val.de.gz", *FAST])
    assert code == code_gz == 0 and zipped == plain and len(plain.splitlines()) == 20
    scores = []
    for r in (ref, tmp_path / "val.en.gz"):
        out = io.StringIO()
        (tmp_path / "hyp").write_text(plain, encoding="utf-8")
        assert evaluate_main([str(tmp_path / "hyp"), str(r), "--json"], stdout=out) == 0
        scores.append(json.loads(out.getvalue())["bleu"])
    assert scores[0] == scores[1]
    (tmp_path / "broken.de.gz").write_bytes(b"not gzip")
    code, _, err = run_translate([checkpoint, tmp_path / "broken.de.gz", *FAST])
    assert code == 2
    _one_line_error(err, "broken.de.gz: not a readable gzip file")


def test_evaluate_takes_the_checkpoints_recipe_search_unless_told_otherwise(checkpoint, multi30k_slice, tmp_path):
    """seq2seq-evaluate --checkpoint scores what the training command scored: the recipe's
    eval.search (here beam 2, at most 8 tokens), where no search option is given."""
    from infer.search import SearchConfig
    from seq2seq.checkpoint import load

    recipe = load(checkpoint)["train_config"]["eval"]["search"]
    assert (recipe["beam_size"], recipe["max_len"]) == (2, 8)
    src, ref = multi30k_slice / "val.de", multi30k_slice / "val.en"
    lines = src.read_text(encoding="utf-8").splitlines()
    expected = [n[0][0] for n in Translator.from_checkpoint(checkpoint).search(lines, SearchConfig(**recipe))]
    got = {}
    for name, options in [("recipe", []), ("told", ["-b", "1", "--max-len", "3"])]:
        out = tmp_path / f"{name}.en"
        assert evaluate_main([str(ref), "--checkpoint", str(checkpoint), "--source", str(src), "-o", str(out),
                              *options], stdout=io.StringIO()) == 0
        got[name] = out.read_text(encoding="utf-8").splitlines()
    assert got["recipe"] == expected and got["told"] != expected
    assert max(len(line.split()) for line in got["told"]) <= 3


def _one_line_error(capsys_err: str, *needles):
    lines = capsys_err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in capsys_err, capsys_err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_inputs_give_one_line_and_status_2(checkpoint, tmp_path):
    good = tmp_path / "in.de"
    good.write_text("Ein Hund.\n", encoding="utf-8")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    other_version = tmp_path / "v2.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    torch.save({**ckpt, "version": 2}, other_version)
    bad_utf8 = tmp_path / "bad.de"
    bad_utf8.write_bytes(b"gut\nschlecht \xff\n")
    cases = [
        ([tmp_path / "missing.pt", good], ["missing.pt", "no such checkpoint"]),
        ([tmp_path, good], ["is a directory"]),
        ([truncated, good], ["truncated.pt", "not a readable checkpoint"]),
        ([other_version, good], ["v2.pt", "version 2"]),
        ([checkpoint, tmp_path / "nothere.de"], ["nothere.de: no such file"]),
        ([checkpoint, tmp_path], ["is a directory"]),
        ([checkpoint, bad_utf8], ["bad.de:2: invalid UTF-8"]),
        ([checkpoint, good, "--beam-size", "wide"], ["--beam-size", "invalid int value: 'wide'"]),
        ([checkpoint, good, "--dtype", "fp8"], ["--dtype", "invalid choice"]),
    ]
    for args, needles in cases:
        code, out, err = run_translate(args)
        assert code == 2 and out == "", args
        _one_line_error(err, *needles)
    code, out, _ = run_translate([checkpoint, bad_utf8, "--replace-invalid", *FAST])
    assert code == 0 and out.count("\n") == 2


def test_usage_errors_exit_2_in_one_line(checkpoint, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer", "translate", str(checkpoint), "--max-len", "x"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    _one_line_error(proc.stderr, "--max-len", "invalid int value")


def test_failed_run_leaves_an_existing_output_file_alone(checkpoint, tmp_path):
    out = tmp_path / "out.en"
    out.write_text("earlier work\n")
    code, _, err = run_translate([checkpoint, tmp_path / "missing.de", "-o", out])
    assert code == 2 and out.read_text() == "earlier work\n"


def test_evaluate_line_count_mismatch_names_both_files(tmp_path, capsys):
    (tmp_path / "hyp").write_text("a\nb\nc\n")
    (tmp_path / "ref").write_text("a\nb\n")
    assert evaluate_main([str(tmp_path / "hyp"), str(tmp_path / "ref")]) == 2
    _one_line_error(capsys.readouterr().err, "hyp has 3 lines but", "ref has 2")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), min_size=1, max_size=8))
def test_any_unicode_lines_keep_count_and_order(checkpoint, lines):
    """Whatever the text (line separators and control characters included, no raw newline),
    one output line per input line, in order, and no crash."""
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    code, out, err = run_translate([checkpoint, *FAST], stdin=data)
    assert code == 0, err
    outputs = out.split("\n")
    assert outputs[-1] == "" and len(outputs) - 1 == len(lines)
    assert all(o == "" for i, o in zip(lines, outputs) if not i.strip())
    code, reversed_out, _ = run_translate([checkpoint, *FAST], stdin="".join(l + "\n" for l in lines[::-1]).encode())
    assert reversed_out.split("\n")[:-1] == outputs[:-1][::-1]


def test_gpu_out_of_memory_splits_the_batch_and_keeps_every_line(checkpoint, mixed_input, monkeypatch):
    """A batch of more than two sentences 'runs out of memory': it is halved until it fits."""
    t = Translator.from_checkpoint(checkpoint)
    kw = dict(beam_size=2, max_len_b=4, max_len=12)
    expected = t.translate(mixed_input, **kw)
    real_search, sizes = t.engine.search, []

    def tight_memory(src, max_lens, cfg, greedy, prefix=None):
        if src.size(0) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(src.size(0))
        return real_search(src, max_lens, cfg, greedy, prefix)

    monkeypatch.setattr(t.engine, "search", tight_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    assert t.translate(mixed_input, **kw) == expected
    assert max(sizes) <= 2 and sum(sizes) == sum(1 for line in mixed_input if line.strip())


def test_checkpoint_with_a_bad_model_config_is_named(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    bad = tmp_path / "bad_config.pt"
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "d_modle": 3}}, bad)
    code, _, err = run_translate([bad, "-"], stdin=b"Ein Hund.\n")
    assert code == 2
    _one_line_error(err, "bad_config.pt: model_config.d_modle: unknown key")


def test_closed_pipe_ends_quietly(checkpoint, capsys):
    """The reader went away (`| head`): no error message, the status of a SIGPIPE."""

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    code = translate_main([str(checkpoint), *FAST], stdin=io.BytesIO(b"Ein Hund.\n"), stdout=ClosedPipe())
    assert code == 141 and capsys.readouterr().err == ""


def test_evaluate_with_several_references(tmp_path, multi30k_slice):
    refs = (multi30k_slice / "val.en").read_text(encoding="utf-8").splitlines()
    refs2 = [r.lower() for r in refs]
    hyps = [r.lower() if i % 2 else r for i, r in enumerate(refs)]
    for name, lines in [("hyp", hyps), ("ref1", refs), ("ref2", refs2)]:
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = io.StringIO()
    assert evaluate_main([str(tmp_path / n) for n in ("hyp", "ref1", "ref2")] + ["--json"], stdout=out) == 0
    got = json.loads(out.getvalue())
    assert got["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs, refs2]).score, 2)
    assert got["bleu_signature"].startswith("nrefs:2")


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer", "translate", str(tmp_path / "missing.pt"), "--debug"],
                          capture_output=True, text=True, cwd=ROOT, input="x\n")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr
