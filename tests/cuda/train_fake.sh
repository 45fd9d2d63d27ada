#!/bin/bash
# CUDA training through runtime/cuda.c against the fake libcuda and cuBLAS (see fake.sh):
# test_train_fake on one and two devices, one and two fake GPUs, two stream schedules.
#
# Then `alexc train --target cuda` itself for an epoch of two steps on Fashion-MNIST (when
# the data is installed): it must train, evaluate, checkpoint and write the weights, with
# the same train loss as --target cpu prints.
#
# usage: tests/cuda/train_fake.sh TEST_TRAIN_FAKE FAKE_LIB_DIR CXX EMU_HEADER ALEXC
set -u
test_bin=$1 fake_lib=$2 cxx=$3 emu_header=$4 alexc=$5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ALEXC_CACHE=$tmp/cache                # NVRTC results, whose sources the fake builds
export ALEXC_FAKE_CUDA_MODULES=$tmp/modules
export ALEXC_FAKE_CUDA_CACHE=$ALEXC_CACHE
export ALEXC_FAKE_CUDA_EMU=$emu_header ALEXC_FAKE_CUDA_CXX=$cxx
failures=0
# SPEC DEVICES GPUS
for c in "specs/mini-alexnet.yaml 1 1" "specs/mini-alexnet.yaml 2 1" "specs/mini-alexnet.yaml 2 2" \
         "tests/passes/graphs/groups4.yaml 2 2"; do
  read -r spec devices gpus <<<"$c"
  for seed in 1 2; do
    LD_LIBRARY_PATH=$fake_lib ALEXC_FAKE_CUDA_GPUS=$gpus ALEXC_FAKE_CUDA_SEED=$seed \
      "$test_bin" "$spec" "$devices" >"$tmp/out" 2>&1
    rc=$?
    if [ $rc -eq 77 ]; then
      cat "$tmp/out"
      exit 77
    fi
    echo "$spec, $devices device(s) on $gpus fake GPU(s), schedule $seed: $([ $rc -eq 0 ] && echo OK || echo FAIL)"
    if [ $rc -ne 0 ]; then
      sed 's/^/    /' "$tmp/out"
      failures=$((failures + 1))
    fi
  done
done
data=/usr/share/datasets/fashion-mnist
if [ -e "$data/train-labels-idx1-ubyte.gz" ]; then
  for target in cuda cpu; do
    LD_LIBRARY_PATH=$fake_lib "$alexc" train specs/mini-alexnet.yaml --data "$data" \
      --out "$tmp/$target" --target $target --epochs 1 --limit 64 --test-limit 32 --batch 32 \
      --lr 0.05 --init fan-in --quiet >"$tmp/$target.out" 2>&1
    echo "alexc train --target $target: exit $?"
  done
  loss() { sed -n 's/.*train loss \([0-9.]*\).*/\1/p' "$1"; }
  if [ ! -s "$tmp/cuda/weights.safetensors" ] || [ ! -s "$tmp/cuda/checkpoint.safetensors" ] ||
     [ -z "$(loss "$tmp/cuda.out")" ] || [ "$(loss "$tmp/cuda.out")" != "$(loss "$tmp/cpu.out")" ]; then
    echo "FAIL: alexc train --target cuda on the fake driver:"
    sed 's/^/    /' "$tmp/cuda.out" "$tmp/cpu.out"
    ls "$tmp/cuda"
    failures=$((failures + 1))
  else
    echo "alexc train --target cuda: train loss $(loss "$tmp/cuda.out"), as --target cpu's: OK"
  fi
else
  echo "skipped alexc train --target cuda: no $data"
fi
exit $((failures > 0))
