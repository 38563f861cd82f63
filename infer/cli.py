"""Command lines: seq2seq-translate, seq2seq-evaluate and seq2seq-export, thin layers over Translator,
score and the exporters.

Bad input of any kind ends with one line on stderr naming what was wrong and exit status 2
(--debug shows the traceback instead); nothing is written to an output file unless the whole
run succeeds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import BinaryIO, TextIO

from infer.search import LENGTH_NORMS, STOPS, SearchConfig
from infer.textio import InputError, read_input, write_atomic
from infer.translator import DTYPE_NAMES
from seq2seq.checkpoint import CheckpointError
from seq2seq.ctranslate2_export import QUANTIZATIONS
from seq2seq.config import ConfigError

USER_ERRORS = (InputError, CheckpointError, ConfigError, ValueError, OSError)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


SEARCH_KEYS = ("beam_size", "length_norm", "alpha", "max_len_a", "max_len_b", "max_len", "min_len", "stop")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    # Search defaults are SearchConfig's, filled in by _search_kwargs: None here means "not given".
    g = p.add_argument_group("search", "defaults as shown; seq2seq-evaluate --checkpoint takes the checkpoint's "
                                       "recipe settings (eval.search) for those not given")
    g.add_argument("-b", "--beam-size", type=int, help="beam size (default 5)")
    g.add_argument("--greedy", action="store_true", help="greedy search instead of beam search")
    g.add_argument("--length-norm", choices=LENGTH_NORMS, help="hypothesis score normalisation (default average)")
    g.add_argument("--alpha", type=float, help="GNMT length penalty exponent (default 0.6)")
    g.add_argument("--max-len-a", type=float, help="at most a * source length + b output tokens (default 1.5)")
    g.add_argument("--max-len-b", type=int, help="(default 10)")
    g.add_argument("--max-len", type=int, help="hard cap on output tokens (default 256)")
    g.add_argument("--min-len", type=int, help="no EOS before this many tokens (default 0)")
    g.add_argument("--stop", choices=STOPS,
                   help="beam search: a sentence is done once beam_size hypotheses are finished (early, as fairseq and "
                        "CTranslate2 stop), and under current or bound once its best live hypothesis, scored at its current "
                        "length or at its budget (exact, slower), cannot beat them either (default current)")
    g.add_argument("--sample", action="store_true",
                   help="draw each token from the model's distribution instead of searching; with --n-best N, N samples "
                        "per line (back-translation)")
    g.add_argument("--temperature", type=float, default=1.0, help="--sample: divide log-probs by this (default 1)")
    g.add_argument("--top-k", type=int, default=0, help="--sample: only the k most probable tokens (default 0: all)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="--sample: only the most probable tokens whose probability reaches p (default 1: all)")
    g.add_argument("--seed", type=int, default=0, help="--sample: the generator's seed, set for every batch (default 0)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="padded tokens per batch, beams included (default 32768 on CPU, 262144 on CUDA)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cuda where there is one, else cpu)")
    g.add_argument("--workers", type=int, default=None,
                   help="CPU: batches translated at once, sharing the threads (default: one per thread up to 4 threads, else 1)")
    g.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                   help="weights and activations (default bf16 on CUDA, fp32 on CPU); int8 (CPU): linear layers' "
                        "weights in int8, activations quantized on the fly")


def _search_kwargs(args, recipe: dict | None = None) -> dict:
    """Translator.translate's search options: those given, else the recipe's (a checkpoint's
    eval.search), else SearchConfig's defaults."""
    recipe = recipe or {}
    defaults = SearchConfig()
    chosen = {key: next(v for v in (getattr(args, key), recipe.get(key), getattr(defaults, key)) if v is not None)
              for key in SEARCH_KEYS}
    return dict(chosen, greedy=args.greedy, max_tokens=args.max_tokens, sample=args.sample,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def _recipe_search(path: str) -> dict:
    """The search a training checkpoint's recipe validated and tested with ({} if it has none)."""
    from seq2seq.checkpoint import load

    return load(path).get("train_config", {}).get("eval", {}).get("search", {})


def _load_translator(args):
    from infer.translator import Translator  # deferred: usage errors answer before torch loads

    return Translator.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype, workers=args.workers)


def _run(prog: str, debug: bool, body) -> int:
    try:
        return body()
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix filters do
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 141
    except USER_ERRORS as err:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130


def translate_main(argv: list[str] | None = None, stdin: BinaryIO | None = None, stdout: TextIO | None = None) -> int:
    p = OneLineParser(prog="seq2seq-translate", description="Translate text files or stdin with a checkpoint.")
    p.add_argument("checkpoint", help="a checkpoint written by seq2seq-train (holds config and vocabulary)")
    p.add_argument("inputs", nargs="*", default=["-"], help="text files, one sentence a line ('-' or none: stdin)")
    p.add_argument("-o", "--output", help="write here instead of stdout (replaced only when the run succeeds)")
    p.add_argument("--n-best", type=int, default=0, help="write N hypotheses per line as TSV: line, rank, score, text")
    p.add_argument("--prefix", metavar="FILE", help="target text each translation must begin with, one line per input "
                                                     "line (kept verbatim and scored; an empty line: none)")
    p.add_argument("-i", "--interactive", action="store_true", help="answer each stdin line as it arrives")
    p.add_argument("--replace-invalid", action="store_true", help="translate undecodable bytes as U+FFFD instead of failing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    _add_search_options(p)
    args = p.parse_intermixed_args(argv)
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout

    def body() -> int:
        if args.n_best < 0 or (args.beam_size is not None and args.beam_size < 1):
            raise ValueError("--n-best must be >= 0 and --beam-size >= 1")
        if args.interactive:
            if args.inputs != ["-"] or args.output or args.prefix:
                raise ValueError("--interactive reads stdin and writes stdout: no input files, --output or --prefix")
            return _interactive(args, stdin, stdout)
        sources = [(name, read_input(name, stdin, args.replace_invalid)) for name in args.inputs]
        prefixes = None
        if args.prefix:
            prefixes = read_input(args.prefix, stdin, args.replace_invalid)
            if len(sources) != 1 or len(prefixes) != len(sources[0][1]):
                raise InputError(f"{args.prefix}: {len(prefixes)} prefixes for {sum(len(x) for _, x in sources)} input "
                                 "lines (one input, one prefix a line)")
        translator = _load_translator(args)
        out_lines = []
        for name, lines in sources:
            out_lines += _translate_lines(translator, args, name, lines, prefixes)
        if args.output:
            write_atomic(args.output, out_lines)
        else:
            stdout.writelines(line + "\n" for line in out_lines)
            stdout.flush()
        return 0

    return _run(p.prog, args.debug, body)


def _translate_lines(translator, args, name: str, lines: list[str], prefixes: list[str] | None = None) -> list[str]:
    """Output lines for one input: one per line, or n_best TSV rows per line."""
    from tqdm import tqdm

    def warn(index: int, n: int) -> None:
        sys.stderr.write(f"seq2seq-translate: warning: {name}:{index + 1}: {n} subword tokens, "
                         f"truncated to {translator.max_source_tokens}\n")

    show = not args.quiet and name != "-"
    with tqdm(total=len(lines), disable=not show, unit="sent", desc=name, file=sys.stderr, leave=False) as bar:
        results = translator.translate(lines, n_best=args.n_best or None, on_truncate=warn, progress=bar.update,
                                       prefixes=prefixes, **_search_kwargs(args))
    if not args.n_best:
        return results
    return [f"{i}\t{rank}\t{s:.4f}\t{text}" for i, hyps in enumerate(results, 1) for rank, (text, s) in enumerate(hyps, 1)]


def _interactive(args, stdin: BinaryIO, stdout: TextIO) -> int:
    from infer.textio import decode_lines

    translator = _load_translator(args)
    args.quiet = True  # answers, not progress, go to the terminal
    number = 0
    for raw in iter(stdin.readline, b""):
        number += 1
        (line,) = decode_lines(raw, "<stdin>", args.replace_invalid, first_line=number) or [""]
        for out in _translate_lines(translator, args, f"<stdin>:{number}", [line]):
            stdout.write(out + "\n")
        stdout.flush()
    return 0


def evaluate_main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    p = OneLineParser(prog="seq2seq-evaluate", description="Score translations with sacrebleu: BLEU, chrF, TER.",
                      epilog="Either HYP REF [REF ...], or --checkpoint CKPT --source SRC REF [REF ...] to translate and score.")
    p.add_argument("files", nargs="+", help="hypotheses then references, or only references with --checkpoint")
    p.add_argument("--checkpoint", help="translate --source with this checkpoint, then score")
    p.add_argument("--source", help="source text for --checkpoint")
    p.add_argument("-o", "--output", help="with --checkpoint: also write the translations here")
    p.add_argument("--lowercase", action="store_true", help="case-insensitive scores")
    p.add_argument("--replace-invalid", action="store_true", help="read undecodable bytes as U+FFFD instead of failing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    _add_search_options(p)
    args = p.parse_intermixed_args(argv)
    stdout = stdout or sys.stdout

    def body() -> int:
        if args.checkpoint:
            if not args.source:
                raise ValueError("--checkpoint needs --source")
            hyp_name, refs = args.source, args.files
            source = read_input(args.source, sys.stdin.buffer, args.replace_invalid)
            hyps = _load_translator(args).translate(source, **_search_kwargs(args, _recipe_search(args.checkpoint)))
            if args.output:
                write_atomic(args.output, hyps)
        else:
            if len(args.files) < 2:
                raise ValueError("give a hypothesis file and at least one reference file")
            hyp_name, refs = args.files[0], args.files[1:]
            hyps = read_input(hyp_name, sys.stdin.buffer, args.replace_invalid)
        ref_lines = [read_input(r, sys.stdin.buffer, args.replace_invalid) for r in refs]
        for name, lines in zip(refs, ref_lines):
            if len(lines) != len(hyps):
                raise InputError(f"{hyp_name} has {len(hyps)} lines but {name} has {len(lines)}")
        from infer.evaluate import score  # deferred: sacrebleu loads only where it scores

        result = score(hyps, ref_lines, lowercase=args.lowercase)
        if args.json:
            stdout.write(json.dumps(result) + "\n")
        else:
            for metric in ("bleu", "chrf", "ter"):
                stdout.write(f"{metric.upper() if metric != 'chrf' else 'chrF'} = {result[metric]:.2f}  {result[metric + '_signature']}\n")
        return 0

    return _run(p.prog, args.debug, body)


def export_main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    p = OneLineParser(prog="seq2seq-export", description="Export a checkpoint for another toolkit.",
                      epilog="hf-marian: a directory that transformers loads with MarianMTModel.from_pretrained and "
                             "AutoTokenizer.from_pretrained (post-norm relu/gelu models only). ctranslate2: a directory "
                             "that ctranslate2.Translator loads, with tokenizer.json for the pieces (every model; "
                             "needs the ctranslate2 package).")
    p.add_argument("checkpoint", help="a checkpoint written by seq2seq-train")
    p.add_argument("outdir", help="directory to write (created if missing; files in it are replaced)")
    p.add_argument("--format", choices=["hf-marian", "ctranslate2"], default="hf-marian", help="target format (default hf-marian)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, help="ctranslate2: weight type (default: as trained, float32)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    args = p.parse_intermixed_args(argv)
    stdout = stdout or sys.stdout

    def body() -> int:
        if args.format == "ctranslate2":
            from seq2seq.ctranslate2_export import export_ctranslate2  # deferred: usage errors answer first

            out = export_ctranslate2(args.checkpoint, args.outdir, args.quantization)
            stdout.write(f"wrote {out} (CTranslate2{', ' + args.quantization if args.quantization else ''})\n")
            return 0
        if args.quantization:
            p.error("--quantization applies to --format ctranslate2")
        from seq2seq.marian import export_marian  # deferred: usage errors answer before torch loads

        out = export_marian(args.checkpoint, args.outdir)
        stdout.write(f"wrote {out} (MarianMTModel, {args.format})\n")
        return 0

    return _run(p.prog, args.debug, body)
