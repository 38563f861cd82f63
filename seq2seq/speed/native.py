"""The native CPU kernel: compiled from seq2seq/speed/csrc on first use, cached, loaded as a torch op.

torch.ops.seq2seq.panel_linear (csrc/panel_linear.cpp), fp32 for x86 CPUs with AVX2, is the
product of seq2seq.speed.packed: it overlaps reading each weight from memory with the arithmetic
on the one before, which oneDNN does not. It is built by the C++ compiler that torch.compile uses on CPU anyway (`c++`,
or $CXX), once per source and PyTorch version, into $SEQ2SEQ_CACHE_DIR (default
~/.cache/seq2seq): about 25 s on two cores, then a load. Where it cannot be built (no compiler,
no AVX2, not x86, SEQ2SEQ_NATIVE=0), load() says why and seq2seq.speed.packed falls back to oneDNN.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch.utils import cpp_extension

SOURCES = [Path(__file__).with_name("csrc") / "panel_linear.cpp"]
_loaded: bool | None = None
why_not = ""  # why the kernels are not loaded, once load() has said False


def _flags() -> list[str]:
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    libs = [flag for path in cpp_extension.library_paths() for flag in (f"-L{path}", f"-Wl,-rpath,{path}")]
    # -fopenmp: at::parallel_for runs on PyTorch's OpenMP threads (torch.set_num_threads).
    return ["-shared", "-fPIC", "-O3", "-mavx2", "-mfma", "-fopenmp", "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *includes, *libs, "-ltorch", "-ltorch_cpu", "-lc10"]


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "seq2seq"
    return Path(os.environ.get("SEQ2SEQ_CACHE_DIR", default))


def _build(compiler: str, build: bool = True) -> Path | None:
    """The shared library for this source, PyTorch and compiler, compiled unless cached (None
    when it is not cached and build is False)."""
    flags = _flags()
    texts = [source.read_text() for source in SOURCES]
    key = hashlib.sha256("\0".join([*texts, torch.__version__, compiler, *flags]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    if not target.exists():
        if not build:
            return None
        sys.stderr.write("seq2seq: building the native CPU kernel, once per PyTorch version (about 25 s on 2 cores)\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Compile beside the target and rename: a process that loses the race still loads a whole file.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            done = subprocess.run([compiler, *map(str, SOURCES), *flags, "-o", str(built)], capture_output=True, text=True)
            if done.returncode != 0:
                first = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:200])
                raise RuntimeError(f"{compiler} could not build seq2seq/speed/csrc: {first}")
            os.replace(built, target)
    return target


def _register_fake() -> None:
    # Shapes for torch.compile and export, which cannot run the kernel while they trace.
    @torch.library.register_fake("seq2seq::panel_linear")
    def _(rows, panels, bias, out_features):
        return rows.new_empty(rows.size(0), out_features)


def ready() -> bool:
    """Whether load() has loaded the kernels, without trying to (cheap inside traced code)."""
    return _loaded is True


def load(build: bool = True) -> bool:
    """Build (unless cached, or build is False) and load the native kernel once per process; True
    when torch.ops.seq2seq.panel_linear is there to call. When False, why_not says why (warned once, unless switched off)."""
    global _loaded, why_not
    if _loaded is None:
        compiler = os.environ.get("CXX", "c++")
        if os.environ.get("SEQ2SEQ_NATIVE", "1") == "0":
            why_not = "switched off by SEQ2SEQ_NATIVE=0"
        elif platform.machine().lower() not in ("x86_64", "amd64"):
            why_not = f"the kernels are written for x86-64 CPUs, not {platform.machine()}"
        elif torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            why_not = f"this CPU lacks AVX2 (PyTorch reports {torch.backends.cpu.get_cpu_capability()})"
        elif shutil.which(compiler) is None:
            why_not = f"no C++ compiler {compiler!r} on PATH (set CXX)"
        else:
            try:
                library = _build(shutil.which(compiler), build)
                if library is None:  # not built yet, and not to be built now: ask again later
                    return False
                torch.ops.load_library(str(library))
                _register_fake()
            except (OSError, RuntimeError) as error:
                why_not = str(error)
        _loaded = not why_not
        if why_not and "SEQ2SEQ_NATIVE" not in why_not:
            warnings.warn(f"seq2seq: native CPU kernels not loaded ({why_not}); using oneDNN's products", stacklevel=2)
    return _loaded
