"""Freed memory kept for reuse (seq2seq.speed.memory): on CPU, inference and training set it up,
and a block freed and allocated again is not faulted in from the kernel again. Counted in fresh
processes, whose malloc no other test has set."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The page faults of allocating and filling a 64 MiB tensor once another was freed (the third
# time: the heap has grown by then), after setting up a CPU model for argv[1] (or nothing: "plain").
REFILL = """
import resource, sys, torch
from seq2seq import speed
from tests.conftest import tiny_model
if sys.argv[1] == "inference":
    speed.for_inference(tiny_model())
elif sys.argv[1] == "training":
    speed.for_training(tiny_model())
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    x = torch.ones(16 << 20)
    del x
    before = faults()
    x = torch.ones(16 << 20)
    refill = faults() - before
    del x
print(refill)
"""


def refill_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", REFILL, mode], cwd=ROOT, check=True, capture_output=True, text=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_cpu_inference_and_training_reuse_a_freed_block_instead_of_faulting_it_in_again():
    pages = (64 << 20) // 4096
    assert refill_faults("plain") > pages // 2  # glibc unmapped it: every page faults again
    assert refill_faults("inference") < pages // 50
    assert refill_faults("training") < pages // 50
