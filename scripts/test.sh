#!/usr/bin/env bash
# Builds and runs the whole test suite twice: a plain build (-Werror), and one with
# AddressSanitizer + UndefinedBehaviorSanitizer (the ctest label 'sanitize').
# Tests labelled 'long' (the NVRTC compile of every GPU check case, the CUDA training
# emulation of alexnet-torchvision: some ten minutes more) run only with --long.
# usage: scripts/test.sh [--long]
set -euo pipefail
cd "$(dirname "$0")/.."
skip=(-LE long)
case "${1:-}" in
  --long) skip=() ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--long]" >&2; exit 2 ;;
esac
scripts/deps.sh
jobs="$(nproc)"
cmake -S . -B build -DALEXC_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "${skip[@]}")
cmake -S . -B build-san -DALEXC_WERROR=ON -DALEXC_SANITIZE=ON >/dev/null
cmake --build build-san -j"$jobs"
(cd build-san && ctest --output-on-failure -j"$jobs" -L sanitize "${skip[@]}")
