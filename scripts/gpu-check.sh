#!/usr/bin/env bash
# The GPU check, for a session that has the device machine (an H100/H200 with the
# CUDA driver, no libyaml, no libcjson). Build here, carry the binary and the two
# libraries it needs, run the GPU test there:
#
#   here:   scripts/gpu-check.sh prep           # builds build/alexc, fills build/devlibs
#   there:  device run, carry ["build/alexc", "build/devlibs"], command:
#           scripts/gpu-check.sh run
#
# `run` prints nvidia-smi's GPU name, then tests/cuda/gpu.sh's table (every spec,
# fused/unfused, 1/2 devices, --conv gemm/direct, against the reference executor).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prep)
  scripts/deps.sh
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j"$(nproc)" --target alexc
  mkdir -p build/devlibs
  for lib in libyaml-0.so.2 libcjson.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" build/devlibs/
  done
  ls -la build/alexc build/devlibs
  ;;
run)
  export LD_LIBRARY_PATH="$PWD/build/devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  export ALEXC_CACHE="${TMPDIR:-/tmp}/alexc-cache"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  bash tests/cuda/gpu.sh build/alexc
  ;;
*)
  echo "usage: scripts/gpu-check.sh prep|run" >&2
  exit 2
  ;;
esac
