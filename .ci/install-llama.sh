#!/usr/bin/env bash
# Install llama-cpp-python (compiled from source on Linux) only when `import llama_cpp` fails,
# with the trimmed build measured in docs/install.md; then the extras its OpenAI-compatible
# server needs (the upstream tests and the model benchmark run it). Safe to run again:
# each step is skipped when already done, and pip's cache of built wheels (~/.cache/pip)
# turns a repeated build into a one-second install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"  # pinned: the wheel cache is keyed by the exact release
unset PIP_NO_CACHE_DIR  # the wheel cache is what makes the second install fast

if "$PYTHON" -c "import llama_cpp" 2>/dev/null; then
    echo "llama-cpp-python already installed: $("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)')"
else
    # LLAVA_BUILD=OFF: no multimodal library (nbchat serves a text model).
    # The include file skips llama.cpp's "common" library, which the Python package never loads.
    # llama.cpp's tools, examples, tests and server are already off when it is built as a subproject.
    export CMAKE_ARGS="-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/.ci/llama-skip-common.cmake"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
    started=$SECONDS
    if ! "$PYTHON" -m pip install -q "llama-cpp-python==$VERSION"; then
        echo "the trimmed llama-cpp-python build failed; building with its default settings" >&2
        CMAKE_ARGS="" "$PYTHON" -m pip install -q "llama-cpp-python==$VERSION"
    fi
    echo "llama-cpp-python $VERSION installed in $((SECONDS - started)) s"
fi

# llama-cpp-python[server]'s requirements, named one by one so that pip never
# considers rebuilding llama-cpp-python itself.
if ! "$PYTHON" -c "import llama_cpp.server.app" 2>/dev/null; then
    "$PYTHON" -m pip install -q "fastapi>=0.100.0" "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.4" \
        "pydantic-settings>=2.0.1" "PyYAML>=5.1" "uvicorn>=0.22.0"
fi
