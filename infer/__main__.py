"""python -m infer translate|evaluate|export ...: the same as seq2seq-translate, seq2seq-evaluate and seq2seq-export."""
import sys

from infer.cli import evaluate_main, export_main, translate_main

COMMANDS = {"translate": translate_main, "evaluate": evaluate_main, "export": export_main}

if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    sys.stderr.write("usage: python -m infer {translate|evaluate|export} ...\n")
    sys.exit(2)
sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
