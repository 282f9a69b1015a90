"""Which instruction sets llama.cpp may use on this CPU: build options and a safety check.

A llama.cpp built with ``-march=native`` (the default of ``pip install
llama-cpp-python``) is tied to the CPU that built it, and on Intel CPUs with
AMX it faults at once with an illegal instruction (its AMX code lacks the
per-thread tile permission and configuration). This module owns the two
answers nbchat needs, from ``/proc/cpuinfo`` and from llama.cpp's own
``llama_print_system_info()`` line:

- :func:`cmake_defines`: the ggml build options for *this* CPU, every safe
  instruction set it has (AVX2, AVX-512, VNNI...) and never AMX;
- :func:`check_library`: whether an installed library can run here (it needs
  no instruction set the CPU lacks) and whether it carries AMX code.

Pure standard library and no nbchat imports beyond the package itself, so
``.ci/install-llama.sh`` can run it (``python -m nbchat.backends.cpu``) before
nbchat's dependencies are installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: ggml's x86 build options (``GGML_*``) and the /proc/cpuinfo flags each needs.
#: ``GGML_AVX512`` compiles with -mavx512f/cd/vl/dq/bw, so it needs all five.
GGML_X86_OPTIONS: tuple[tuple[str, frozenset[str]], ...] = (
    ("SSE42", frozenset({"sse4_2"})),
    ("AVX", frozenset({"avx"})),
    ("F16C", frozenset({"f16c"})),
    ("FMA", frozenset({"fma"})),
    ("AVX2", frozenset({"avx2"})),
    ("BMI2", frozenset({"bmi2"})),
    ("AVX_VNNI", frozenset({"avx_vnni"})),
    ("AVX512", frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"})),
    ("AVX512_VBMI", frozenset({"avx512vbmi"})),
    ("AVX512_VNNI", frozenset({"avx512_vnni"})),
    ("AVX512_BF16", frozenset({"avx512_bf16"})),
)

#: Options always off: AMX faults in llama.cpp's current code (see the module docstring).
GGML_ALWAYS_OFF = ("NATIVE", "AMX_TILE", "AMX_INT8", "AMX_BF16")

#: Features named in ``llama_print_system_info()`` and the CPU flags each one needs to run.
LIBRARY_FEATURE_FLAGS: dict[str, frozenset[str]] = {
    "SSE3": frozenset({"pni"}),
    "SSSE3": frozenset({"ssse3"}),
    **{name: flags for name, flags in GGML_X86_OPTIONS},
    "AMX_INT8": frozenset({"amx_int8", "amx_tile"}),
    "AMX_TILE": frozenset({"amx_tile"}),
    "AMX_BF16": frozenset({"amx_bf16", "amx_tile"}),
}

AMX_FEATURES = frozenset({"AMX_INT8", "AMX_TILE", "AMX_BF16"})


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prompt_threads(n_threads: int) -> int:
    """llama.cpp's threads for a prompt's batches: every core (big batches pay for the threads'
    wake-ups), and never fewer than the ``n_threads`` that decode."""
    return max(n_threads, available_cores())


def is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i686", "i386"}


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_cpu() -> tuple[str, frozenset[str]]:
    """This machine's CPU model name and flags (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", frozenset()
    name = next((line.partition(":")[2].strip() for line in text.splitlines() if line.startswith("model name")), "")
    return name or "unknown", parse_cpu_flags(text)


def enabled_options(cpu_flags: Iterable[str]) -> list[str]:
    """The ggml instruction-set options this CPU supports (never AMX)."""
    flags = frozenset(cpu_flags)
    return [name for name, needs in GGML_X86_OPTIONS if needs <= flags]


def cmake_defines(cpu_flags: Iterable[str]) -> dict[str, str]:
    """``GGML_*`` build options: each instruction set on or off as this CPU has it, no native tuning, no AMX.

    Every option is given explicitly: with ``GGML_NATIVE=OFF`` ggml turns
    AVX, AVX2, FMA, F16C and BMI2 *on* by default, which would fault on a CPU
    without them.
    """
    enabled = set(enabled_options(cpu_flags))
    defines = {f"GGML_{name}": "ON" if name in enabled else "OFF" for name, _ in GGML_X86_OPTIONS}
    defines.update({f"GGML_{name}": "OFF" for name in GGML_ALWAYS_OFF})
    return defines


def build_key(cpu_flags: Iterable[str]) -> str:
    """A short name for the instruction sets a build uses: built wheels are cached under it,
    so a machine with another CPU never reuses a wheel it cannot run."""
    enabled = ",".join(enabled_options(cpu_flags)) if is_x86() else platform.machine()
    return hashlib.sha256(enabled.encode()).hexdigest()[:12]


def parse_system_info(info: str) -> frozenset[str]:
    """The features reported as ``NAME = 1`` in ``llama_print_system_info()``."""
    features = set()
    for part in info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if sep and value.strip() == "1" and name:
            features.add(name)
    return frozenset(features)


@dataclass(frozen=True)
class LibraryCheck:
    """What an installed llama.cpp needs that this CPU lacks, and whether it carries AMX code."""

    features: frozenset[str]
    missing: tuple[str, ...]
    amx: bool

    @property
    def runs_here(self) -> bool:
        return not self.missing

    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"llama.cpp was built for another CPU: it uses {', '.join(self.missing)}, which this CPU lacks")
        if self.amx:
            out.append("llama.cpp was built with AMX, which faults in its current code (nbchat turns the AMX path "
                       "off when it loads the model; a rebuild removes it)")
        return out


def check_library(system_info: str, cpu_flags: Iterable[str]) -> LibraryCheck:
    flags = frozenset(cpu_flags)
    features = parse_system_info(system_info)
    missing = tuple(sorted(f for f in features if f in LIBRARY_FEATURE_FLAGS and not LIBRARY_FEATURE_FLAGS[f] <= flags))
    return LibraryCheck(features=features, missing=missing, amx=bool(features & AMX_FEATURES))


REBUILD_HINT = "rebuild llama.cpp for this machine: bash .ci/install-llama.sh --force (see docs/install.md)"

_PROBE = "import llama_cpp; print(llama_cpp.__version__); print(llama_cpp.llama_print_system_info().decode())"


def probe_installed(python: str = sys.executable, timeout: float = 120.0) -> tuple[str, str] | str:
    """``(version, system_info)`` of the installed llama-cpp-python, read in a child process
    (a library built for another CPU may die loading), or a one-line reason it could not be read."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "loading llama_cpp did not finish"
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        return f"loading llama_cpp failed (exit {done.returncode}): {lines[-1] if lines else 'no message'}"
    version, _, info = done.stdout.partition("\n")
    return version.strip(), info.strip()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbchat.backends.cpu",
                                     description="llama.cpp build options and safety check for this CPU.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--cmake-args", action="store_true", help="print -DGGML_...=ON/OFF for this CPU")
    what.add_argument("--key", action="store_true", help="print the build key that names a wheel for this CPU")
    what.add_argument("--check-installed", action="store_true",
                      help="exit 0 when the installed llama-cpp-python runs on this CPU without AMX, else 1")
    args = parser.parse_args(argv)
    _, flags = read_cpu()
    if args.cmake_args:
        print(" ".join(f"-D{k}={v}" for k, v in cmake_defines(flags).items()) if is_x86() else "")
        return 0
    if args.key:
        print(build_key(flags))
        return 0
    probed = probe_installed()
    if isinstance(probed, str):
        print(probed)
        return 1
    check = check_library(probed[1], flags) if is_x86() else LibraryCheck(frozenset(), (), False)
    for problem in check.problems():
        print(problem)
    return 0 if check.runs_here and not check.amx else 1


if __name__ == "__main__":
    sys.exit(_main())
