#!/usr/bin/env bash
# Builds the Binder environment the way repo2docker does, without Docker, and
# runs every notebook in it:
#
#   1. the Debian packages of binder/apt.txt must be installed on this machine;
#   2. a fresh virtual environment on the Python of binder/runtime.txt
#      (no system site-packages, no PYTHONPATH);
#   3. `pip install -r binder/requirements.txt` from the repository root, as
#      repo2docker does, and nothing else;
#   4. a kernel spec pointing at that environment's Python, in a private
#      JUPYTER_PATH, and nbclient (installed by the requirements, with
#      JupyterLab) running every notebooks/*.ipynb on that kernel, saving the
#      executed copies into OUTDIR.
#
# usage: binder/check.sh [OUTDIR]
#   NBCHAT_BINDER_NO_CACHE=1  install with --no-cache-dir, as repo2docker does:
#                             llama-cpp-python is then compiled from source
#                             (about 5 minutes on 2 cores) instead of reusing
#                             the wheel .ci/install-llama.sh built for this CPU
#                             (~/.cache/nbchat/wheels) or one pip built earlier
#   NBCHAT_BINDER_PYTHON=...  the interpreter for the environment (default: pythonX.Y from runtime.txt)
#   NBCHAT_BINDER_TIMEOUT=600 seconds a notebook cell may take
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${1:-$(mktemp -d)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n 's/^python-\([0-9.]*\)$/\1/p' binder/runtime.txt)
[ -n "$version" ] || { echo "binder/runtime.txt must read python-X.Y" >&2; exit 2; }
python=${NBCHAT_BINDER_PYTHON:-python$version}

echo "::: binder/apt.txt"
missing=()
while read -r package; do
    package=${package%%#*}
    package=${package//[[:space:]]/}
    [ -z "$package" ] && continue
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done < binder/apt.txt
if [ ${#missing[@]} -gt 0 ]; then
    echo "not installed: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=$work/venv
# The environment sees only what the requirements install: nothing from this shell's setup.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV NBCHAT_URL NBCHAT_TOKEN

echo "::: a fresh environment on $("$python" --version 2>&1) ($python)"
"$python" -m venv "$venv"
got=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$got" = "$version" ] || { echo "the environment runs Python $got, runtime.txt says $version" >&2; exit 2; }

echo "::: pip install -r binder/requirements.txt"
began=$SECONDS
cache=()
if [ "${NBCHAT_BINDER_NO_CACHE:-}" = 1 ]; then
    cache=(--no-cache-dir)
else
    # The wheel .ci/install-llama.sh built for this CPU (no AMX) stands in for the portable build, so a
    # machine that compiled llama.cpp once does not compile it again here; the notebooks' check is the same.
    key=$(PYTHONPATH="$repo" "$python" -m nbchat.backends.cpu --key 2>/dev/null || true)
    wheels=${NBCHAT_WHEEL_CACHE:-$HOME/.cache/nbchat/wheels}
    for dir in "$wheels"/llama-cpp-python-*-"$key"; do
        if [ -n "$key" ] && compgen -G "$dir/llama_cpp_python-*.whl" >/dev/null; then
            llama=${dir#"$wheels"/llama-cpp-python-}
            echo "llama-cpp-python==${llama%-"$key"}" > "$work/constraints.txt"
            cache=(--find-links "$dir" --constraint "$work/constraints.txt")
            echo "llama-cpp-python: the wheel cached in $dir"
        fi
    done
fi
# (the filter drops a notice this machine's pip configuration prints for every package)
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${cache[@]}" -r binder/requirements.txt \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
echo "installed in $((SECONDS - began)) s"

echo "::: a kernel in that environment"
spec=$work/jupyter/kernels/nbchat-binder
mkdir -p "$spec"
cat > "$spec/kernel.json" <<EOF
{"argv": ["$venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "nbchat (binder environment)", "language": "python"}
EOF
export JUPYTER_PATH=$work/jupyter

echo "::: notebooks"
"$venv/bin/python" - "$venv" "$out" "${NBCHAT_BINDER_TIMEOUT:-600}" notebooks/*.ipynb <<'EOF'
import os
import sys
import time

import nbformat
from nbclient import NotebookClient

venv, out, timeout, *paths = sys.argv[1:]


def run(nb: nbformat.NotebookNode, cwd: str) -> nbformat.NotebookNode:
    client = NotebookClient(nb, kernel_name="nbchat-binder", timeout=int(timeout), startup_timeout=120,
                            resources={"metadata": {"path": cwd}})
    return client.execute()


# The kernel must run in the new environment, with nbchat installed there (not found through the repository).
probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    "import sys, nbchat, llama_cpp\n"
    "print(sys.prefix)\nprint(nbchat.__file__)\nprint(llama_cpp.llama_print_system_info().decode().strip())")])
prefix, module, cpu = run(probe, "notebooks").cells[0].outputs[0]["text"].splitlines()
prefix, module = os.path.realpath(prefix), os.path.realpath(module)
assert prefix == os.path.realpath(venv), f"the kernel runs in {prefix}, not in {venv}"
assert module.startswith(prefix + os.sep), f"nbchat comes from {module}, not from the environment"
print(f"kernel: {prefix}/bin/python, nbchat from {module}")
print(f"llama.cpp: {cpu}")
# AMX code faults in llama.cpp on current Intel CPUs: GGML_NATIVE=OFF leaves it out.
assert "AMX" not in cpu, "llama.cpp was built with AMX (a -march=native wheel from pip's cache?)"
if os.environ.get("NBCHAT_BINDER_NO_CACHE") == "1":
    # Built here from binder/requirements.txt: GGML_NATIVE=OFF means no AVX-512, even on a CPU that has it.
    assert "AVX512 = 1" not in cpu, "llama.cpp was built for this CPU (-march=native), not for a portable baseline"

for path in paths:
    began = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    run(nb, os.path.dirname(path))
    nbformat.write(nb, os.path.join(out, os.path.basename(path)))
    print(f"{path}: {len(nb.cells)} cells ran in {time.perf_counter() - began:.0f} s")
EOF
echo "executed notebooks: $out"
