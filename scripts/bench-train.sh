#!/usr/bin/env bash
# The CPU training table of docs/benchmarks.md: the training step (forward, loss,
# backward, SGD update) of the paper's AlexNet at batch 16 (the fused training program,
# then the plain one) and of mini-AlexNet at batch 128 with alexc's CPU target, then PyTorch's train step for the same AlexNet and batch
# in the same run (../shared/bench/torch_peers.py, Debian's PyTorch), skipped where
# PyTorch is absent. Run on a quiet machine.
# usage: scripts/bench-train.sh [ALEXC] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
alexc=${1:-build/alexc}
runs=${2:-10}
echo "### alexc, paper's AlexNet, batch 16"
echo
"$alexc" bench specs/alexnet.yaml --target cpu --train --batch 16 --runs "$runs" --compare-unfused
echo
echo "### alexc, mini-AlexNet, batch 128"
echo
"$alexc" bench specs/mini-alexnet.yaml --target cpu --train --batch 128 --runs "$runs"
echo
peers=../shared/bench/torch_peers.py
if /usr/bin/python3 -c 'import torch' 2>/dev/null && [ -f "$peers" ]; then
  echo "### PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), same machine, same run"
  echo
  /usr/bin/python3 "$peers" --device cpu --batch 16 --iters "$runs" | tail -2
else
  echo "(PyTorch not installed: no peer timings; apt-get install python3-torch)"
fi
