#!/bin/bash
# generated/ holds the CUDA alexc emits for specs/alexnet.yaml, so a change to the code
# generator shows up in review as a diff of the kernels. This test regenerates them
# into a temporary directory and fails if anything differs.
#
# usage: tests/cuda/generated.sh ALEXC [--update]     (--update rewrites generated/)
set -u
alexc=$1
update=${2:-}
variants=("fused" "unfused --no-fuse" "fused-2dev --devices 2" "fused-bf16 --precision bf16"
          "fused-implicit --conv implicit" "fused-convfused --conv fused"
          "fused-convfused-tf32 --conv fused --precision tf32")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for v in "${variants[@]}"; do
  read -r dir opts <<<"$v"
  # shellcheck disable=SC2086
  if ! "$alexc" compile specs/alexnet.yaml --target cuda $opts --emit-source "$out/alexnet/$dir"; then
    echo "FAIL: alexc compile specs/alexnet.yaml --target cuda $opts"
    exit 1
  fi
done
# The training step (one device): compiler/backends/cuda/train.c.
if ! "$alexc" compile specs/alexnet.yaml --target cuda --train --emit-source "$out/alexnet/train"; then
  echo "FAIL: alexc compile specs/alexnet.yaml --target cuda --train"
  exit 1
fi
if [ "$update" = --update ]; then
  rm -rf generated/alexnet
  mkdir -p generated
  cp -r "$out/alexnet" generated/
  echo "generated/alexnet rewritten"
  exit 0
fi
if ! diff -r -u generated/alexnet "$out/alexnet"; then
  echo "FAIL: generated/ is stale. Refresh it with: bash tests/cuda/generated.sh $alexc --update"
  status=1
else
  echo "generated/alexnet is up to date ($(find generated/alexnet -name '*.cu' | wc -l) files)"
fi
exit $status
