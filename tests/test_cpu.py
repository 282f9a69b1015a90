"""The llama.cpp build options and safety check for a CPU, from /proc/cpuinfo and llama.cpp's
system info: every safe instruction set the CPU has, never AMX, never one it lacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nbchat.backends.cpu import build_key, check_library, cmake_defines, parse_cpu_flags, parse_system_info

ROOT = Path(__file__).resolve().parents[1]

# The flags of an Intel Xeon with AMX (Sapphire Rapids), trimmed to what matters here.
SAPPHIRE_RAPIDS = [
    "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni", "avx512f", "avx512cd",
    "avx512vl", "avx512dq", "avx512bw", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
]
# An x86-64 CPU from before AVX (Nehalem class).
NEHALEM = ["sse", "sse2", "ssse3", "sse4_1", "sse4_2", "popcnt"]
NATIVE_ON_AMX = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
                 "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "
                 "REPACK = 1 | ")


def test_cpuinfo_flags_are_read_from_the_first_processor() -> None:
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert parse_cpu_flags(text) == {"fpu", "avx2", "amx_tile"}
    assert parse_cpu_flags("no flags here") == frozenset()


def test_an_amx_cpu_gets_every_avx512_option_and_no_amx() -> None:
    defines = cmake_defines(SAPPHIRE_RAPIDS)
    for name in ("AVX2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "FMA", "F16C"):
        assert defines[f"GGML_{name}"] == "ON", name
    for name in ("NATIVE", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert defines[f"GGML_{name}"] == "OFF", name


def test_an_old_cpu_gets_every_option_it_lacks_turned_off() -> None:
    # ggml turns AVX, AVX2, FMA, F16C and BMI2 on by default once GGML_NATIVE is off
    defines = cmake_defines(NEHALEM)
    assert defines["GGML_SSE42"] == "ON"
    assert {k for k, v in defines.items() if v == "ON"} == {"GGML_SSE42"}


def test_avx512_needs_all_five_of_its_subsets() -> None:
    partial = [f for f in SAPPHIRE_RAPIDS if f != "avx512bw"]
    assert cmake_defines(partial)["GGML_AVX512"] == "OFF"


def test_the_build_key_changes_with_the_instruction_sets_only() -> None:
    assert build_key(SAPPHIRE_RAPIDS) == build_key([*SAPPHIRE_RAPIDS, "rdrand", "sha_ni"])
    assert build_key(SAPPHIRE_RAPIDS) != build_key(NEHALEM)


def test_system_info_features_are_those_set_to_one() -> None:
    assert parse_system_info("CPU : SSE3 = 1 | AVX = 0 | AVX2 = 1 | OPENMP = 1 | ") == {"SSE3", "AVX2", "OPENMP"}


def test_a_native_build_from_an_amx_cpu_is_flagged() -> None:
    on_its_cpu = check_library(NATIVE_ON_AMX, [*SAPPHIRE_RAPIDS, "pni", "ssse3"])
    assert on_its_cpu.runs_here and on_its_cpu.amx
    elsewhere = check_library(NATIVE_ON_AMX, [*NEHALEM, "pni"])
    assert not elsewhere.runs_here
    assert "AVX512" in elsewhere.missing and "AMX_INT8" in elsewhere.missing
    assert any("another CPU" in p for p in elsewhere.problems())


def test_the_build_options_print_without_nbchat_dependencies() -> None:
    # .ci/install-llama.sh runs this before nbchat's requirements are installed:
    # only the standard library may be imported
    code = ("import sys, runpy; sys.argv = ['cpu', '--cmake-args']; "
            "runpy.run_module('nbchat.backends.cpu', run_name='__main__')")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    third_party = {"starlette", "httpx", "websockets", "uvicorn", "llama_cpp", "IPython", "anywidget", "numpy"}
    assert not imported & third_party, imported & third_party
    assert "-DGGML_AMX_INT8=OFF" in out.stdout and "-DGGML_NATIVE=OFF" in out.stdout
