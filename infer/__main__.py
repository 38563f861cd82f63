"""python -m infer translate|evaluate ...: the same as seq2seq-translate and seq2seq-evaluate."""
import sys

from infer.cli import evaluate_main, translate_main

COMMANDS = {"translate": translate_main, "evaluate": evaluate_main}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    sys.stderr.write("usage: python -m infer {translate|evaluate} ...\n")
    sys.exit(2)
sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
