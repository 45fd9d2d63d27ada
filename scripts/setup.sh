#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, then check the
# paper's AlexNet and run it on a random batch with the CPU target (native code through
# LLVM), checked against the reference executor, printing each image's top-5 classes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
build/alexc check specs/alexnet.yaml
echo
echo "running specs/alexnet.yaml on a random batch of 2 on the CPU target (fused, seed 1),"
echo "checked against the reference executor:"
echo "(untrained weights with the paper's init: the scores are close to uniform)"
build/alexc run specs/alexnet.yaml --seed 1 --random 2 --target cpu --compare-ref --top 5
echo
echo "timing it against the unfused build at batch 16 (alexc bench --target cpu):"
build/alexc bench specs/alexnet.yaml --target cpu --batch 16 --runs 3 --compare-unfused
