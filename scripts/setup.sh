#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, then check the
# paper's AlexNet and run it on a random batch, printing each image's top-5 classes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
build/alexc check specs/alexnet.yaml
echo
echo "running specs/alexnet.yaml on a random batch of 2 (reference executor, fused, seed 1):"
echo "(untrained weights with the paper's init: the scores are close to uniform)"
build/alexc run specs/alexnet.yaml --seed 1 --random 2 --top 5
