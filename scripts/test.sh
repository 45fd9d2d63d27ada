#!/usr/bin/env bash
# Builds and runs the whole test suite twice: a plain build (-Werror), and one with
# AddressSanitizer + UndefinedBehaviorSanitizer (the ctest label 'sanitize').
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs="$(nproc)"
cmake -S . -B build -DALEXC_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
cmake -S . -B build-san -DALEXC_WERROR=ON -DALEXC_SANITIZE=ON >/dev/null
cmake --build build-san -j"$jobs"
(cd build-san && ctest --output-on-failure -j"$jobs" -L sanitize)
