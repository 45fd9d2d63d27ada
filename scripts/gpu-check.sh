#!/usr/bin/env bash
# The GPU check, for a session that has the device machine (an H100/H200 with the
# CUDA driver and PyTorch, no libyaml, no libcjson, no LLVM). Build here, carry the
# binary, the libraries it needs and the peer script, run everything there in one go:
#
#   here:   scripts/gpu-check.sh prep      # builds build-gpu/alexc (no LLVM), fills build-gpu/devlibs
#   there:  device run, carry ["build-gpu/alexc", "build-gpu/devlibs"], command:
#           scripts/gpu-check.sh run        # or: run quick (AlexNet fp32 only)
#
# `run` prints the GPU's name, then: alexc bench of specs/alexnet.yaml at batch 128
# (fused against unfused, fp32, tf32, bf16; --conv implicit; and two devices), PyTorch's peer timings in
# the same run (../shared/bench/torch_peers.py, eager and torch.compile), and the GPU
# correctness test (tests/cuda/gpu.sh: every spec, precision, fused/unfused, 1/2
# devices, against the reference executor). Everything also lands in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prep)
  scripts/deps.sh
  # No LLVM: libLLVM alone is bigger than what travels to the device machine.
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DALEXC_LLVM=OFF >/dev/null
  cmake --build build-gpu -j"$(nproc)" --target alexc
  mkdir -p build-gpu/devlibs
  for lib in libyaml-0.so.2 libcjson.so.1; do
    cp -L "$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')" build-gpu/devlibs/
  done
  cp ../shared/bench/torch_peers.py build-gpu/devlibs/ 2>/dev/null ||
    echo "note: ../shared/bench/torch_peers.py not found: no peer timings" >&2
  ls -la build-gpu/alexc build-gpu/devlibs
  ;;
run)
  export LD_LIBRARY_PATH="$PWD/build-gpu/devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  export ALEXC_CACHE="${TMPDIR:-/tmp}/alexc-cache"
  out=${OUT:-$PWD/gpu-check-out}
  mkdir -p "$out"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt" || true
  precisions="fp32 tf32 bf16"
  [ "${2:-}" = quick ] && precisions=fp32
  for p in $precisions; do
    echo "== alexc bench, $p"
    build-gpu/alexc bench specs/alexnet.yaml --target cuda --batch 128 --precision "$p" \
      --compare-unfused | tee "$out/bench-$p.md" || echo "bench $p FAILED"
  done
  echo "== alexc bench, fp32, --conv implicit"
  build-gpu/alexc bench specs/alexnet.yaml --target cuda --batch 128 --conv implicit \
    --compare-unfused | tee "$out/bench-fp32-implicit.md" || echo "bench implicit FAILED"
  echo "== alexc bench, fp32, 2 devices"
  build-gpu/alexc bench specs/alexnet.yaml --target cuda --batch 128 --devices 2 \
    | tee "$out/bench-fp32-2dev.md" || echo "bench 2 devices FAILED"
  if [ -f build-gpu/devlibs/torch_peers.py ]; then
    echo "== PyTorch peers"
    # shellcheck disable=SC2086
    python3 build-gpu/devlibs/torch_peers.py --device cuda --batch 128 --precision $precisions \
      --compile | tee "$out/peers.txt" || echo "peers FAILED"
  fi
  [ "${2:-}" = quick ] && exit 0
  echo "== GPU correctness (tests/cuda/gpu.sh)"
  bash tests/cuda/gpu.sh build-gpu/alexc | tee "$out/gpu-tests.txt"
  ;;
*)
  echo "usage: scripts/gpu-check.sh prep | run [quick]" >&2
  exit 2
  ;;
esac
