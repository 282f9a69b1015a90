#!/usr/bin/env bash
# Install llama-cpp-python compiled for this machine's CPU: every instruction set the CPU has
# (AVX2, AVX-512, VNNI...) chosen explicitly from /proc/cpuinfo, no -march=native and never AMX
# (llama.cpp's AMX code dies with an illegal instruction). Trimmed as measured in docs/install.md.
#
# Safe to run again, and on a machine whose CPU changed:
# - nothing is done when the installed library runs on this CPU and has no AMX (checked in a
#   child process, since a library built for another CPU may die loading);
# - built wheels are kept in ~/.cache/nbchat/wheels under a key of the instruction sets they use,
#   so a CPU of the same kind reinstalls in seconds and another kind never gets a wheel it cannot run
#   (pip's own wheel cache is keyed by the release only, so it is bypassed for this build);
# - --force rebuilds even when the installed library passes the check;
# - --with-server also installs what `python -m llama_cpp.server` needs (the tests and the model
#   benchmark run it), without letting pip rebuild llama-cpp-python.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
WHEEL_CACHE="${NBCHAT_WHEEL_CACHE:-$HOME/.cache/nbchat/wheels}"
force=0
server=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --with-server) server=1 ;;
        *) echo "usage: $0 [--force] [--with-server]" >&2; exit 2 ;;
    esac
done

# nbchat.backends.cpu is standard library only: it runs before nbchat's dependencies are installed.
cpu() { PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m nbchat.backends.cpu "$@"; }

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs || uname -m)"
if [[ $force == 0 ]] && "$PYTHON" -c "import llama_cpp" 2>/dev/null && cpu --check-installed; then
    echo "llama-cpp-python $("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)') already installed and safe on this CPU"
else
    key="$(cpu --key)"
    dest="$WHEEL_CACHE/llama-cpp-python-$VERSION-$key"
    if ! compgen -G "$dest/llama_cpp_python-*.whl" >/dev/null; then
        defines="$(cpu --cmake-args)"
        echo "building llama-cpp-python $VERSION with: $defines"
        # LLAVA_BUILD=OFF: no multimodal library (nbchat serves a text model).
        # The include file skips llama.cpp's "common" library, which the Python package never loads.
        trimmed="-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/.ci/llama-skip-common.cmake"
        export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
        build="$(mktemp -d)"
        started=$SECONDS
        if ! CMAKE_ARGS="$trimmed $defines" "$PYTHON" -m pip wheel -q --no-deps --no-cache-dir -w "$build" \
                "llama-cpp-python==$VERSION"; then
            echo "the trimmed build failed; building without the trimming" >&2
            CMAKE_ARGS="$defines" "$PYTHON" -m pip wheel -q --no-deps --no-cache-dir -w "$build" \
                "llama-cpp-python==$VERSION"
        fi
        echo "llama-cpp-python $VERSION built in $((SECONDS - started)) s"
        mkdir -p "$dest"
        mv "$build"/llama_cpp_python-*.whl "$dest"/
        rm -rf "$build"
    fi
    wheel="$(compgen -G "$dest/llama_cpp_python-*.whl" | head -n1)"
    "$PYTHON" -m pip install -q --force-reinstall --no-deps "$wheel"
    "$PYTHON" -m pip install -q "$wheel"  # its own requirements (numpy, jinja2, diskcache)
    if ! cpu --check-installed; then
        echo "the installed llama-cpp-python does not pass the CPU check above" >&2
        exit 1
    fi
    echo "llama-cpp-python $VERSION installed from $wheel"
fi

# llama-cpp-python[server]'s requirements, named one by one so that pip never
# considers rebuilding llama-cpp-python itself.
if [[ $server == 1 ]] && ! "$PYTHON" -c "import llama_cpp.server.app" 2>/dev/null; then
    "$PYTHON" -m pip install -q "fastapi>=0.100.0" "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.4" \
        "pydantic-settings>=2.0.1" "PyYAML>=5.1" "uvicorn>=0.22.0"
fi
