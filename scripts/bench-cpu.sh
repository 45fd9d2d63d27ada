#!/usr/bin/env bash
# The CPU table of docs/benchmarks.md: alexc bench --target cpu on the paper's AlexNet
# at batch 1 and 16 (fused against unfused, OpenBLAS's sgemm on the same GEMM shapes,
# bf16 fc layers), then PyTorch's CPU time for the same net
# and batches in the same run (../shared/bench/torch_peers.py with Debian's PyTorch),
# skipped where PyTorch is absent. Run on a quiet machine.
# usage: scripts/bench-cpu.sh [ALEXC] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
alexc=${1:-build/alexc}
runs=${2:-10}
for batch in 1 16; do
  echo "### batch $batch"
  echo
  # --gemm loads OpenBLAS: without the OPENBLAS_CORETYPE/L2_SIZE overrides some machines
  # set, so that it picks its own kernel for this CPU (the table names the kernel).
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    "$alexc" bench specs/alexnet.yaml --target cpu --batch "$batch" --runs "$runs" --compare-unfused --gemm
  echo
  "$alexc" bench specs/alexnet.yaml --target cpu --batch "$batch" --runs "$runs" --precision bf16 | grep -E "^CPU|fc|total" ||
    echo "(bf16: this CPU has no AVX512_BF16)"
  echo
done
peers=../shared/bench/torch_peers.py
if /usr/bin/python3 -c 'import torch' 2>/dev/null && [ -f "$peers" ]; then
  echo "### PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), same machine, same run"
  echo
  /usr/bin/python3 "$peers" --device cpu --batch 1 16 | tail -3
else
  echo "(PyTorch not installed: no peer timings; apt-get install python3-torch)"
fi
