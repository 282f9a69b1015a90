# Included by CMake right after llama.cpp's project() call (CMAKE_PROJECT_llama.cpp_INCLUDE).
# llama-cpp-python loads only libllama and libggml*, yet forces llama.cpp's "common" helper
# library on (a cache variable set with FORCE, so -DLLAMA_BUILD_COMMON=OFF cannot win).
# A normal variable shadows that cache entry inside llama.cpp's directory, and option()
# honours it (policy CMP0077), so the slowest part of the build is skipped.
set(LLAMA_BUILD_COMMON OFF)
