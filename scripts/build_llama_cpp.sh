#!/usr/bin/env bash
# Cross-build llama.cpp (llama-bench, llama-quantize, llama-completion) for a riscv64 target's ISA from the
# llama-cpp-python sdist, once, into ~/.cache/rvdeploy/llama.cpp; prints the directory of the executables.
# `rvdeploy bench --compare llama.cpp` does the same on demand.
#   bash scripts/build_llama_cpp.sh [--target spacemit-k1] [-j N]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m rvdeploy.peers.llamacpp_build "$@"
