#!/bin/bash
# CUDA training through runtime/cuda.c against the fake libcuda and cuBLAS (see fake.sh):
# test_train_fake on one and two devices, one and two fake GPUs, two stream schedules.
#
# usage: tests/cuda/train_fake.sh TEST_TRAIN_FAKE FAKE_LIB_DIR CXX EMU_HEADER
set -u
test_bin=$1 fake_lib=$2 cxx=$3 emu_header=$4
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
exit $((failures > 0))
