#!/bin/bash
# The real CUDA runtime (runtime/cuda.c) on the CPU: `alexc run --target cuda
# --compare-ref` with libcuda, cuBLAS and cuBLASLt replaced by the fakes of tests/cuda/fake/
# (found through LD_LIBRARY_PATH), which run the generated kernels compiled for the CPU,
# check every address against the allocations, and run the streams lazily in a seeded
# random order. Each case runs with two schedules (ALEXC_FAKE_CUDA_SEED) and, with
# --devices 2, on one fake GPU (two streams share it) and on two (peer copies).
#
# usage: tests/cuda/fake.sh ALEXC FAKE_LIB_DIR CXX EMU_HEADER
#   FAKE_LIB_DIR  the directory holding the fake libcuda.so.1 and libcublas.so.13
#   CXX, EMU_HEADER  the fake builds each module for the CPU with CXX and cuda_emu.h,
#                 from the source alexc's NVRTC cache keeps
# Exits 77 (ctest: skipped) when this alexc cannot compile CUDA (no NVRTC).
set -u
PRECISIONS="fp32"
SEEDS="1 2"
# Every option on the mini-AlexNet; two graphs of tests/passes/ with the split that
# matters for them (their compiles, NVRTC and g++, are most of the time).
CASES=(
  "specs/mini-alexnet.yaml|gemm direct||--no-fuse|--devices 2|--no-fuse --devices 2"
  "tests/passes/graphs/groups4.yaml|gemm|--devices 2"
  "tests/passes/graphs/groups4.yaml|direct|--no-fuse --devices 2"
  "tests/passes/graphs/branch_concat.yaml|gemm|--no-fuse --devices 2"
  "tests/passes/graphs/branch_concat.yaml|direct|--devices 2"
)  # SPEC|CONVS|OPTIONS|OPTIONS...

alexc=$1 fake_lib=$2 cxx=$3 emu_header=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export ALEXC_CACHE=$tmp/cache                # NVRTC results: compile and run share them
export ALEXC_FAKE_CUDA_MODULES=$tmp/modules  # the CPU builds, by module hash, made from
export ALEXC_FAKE_CUDA_CACHE=$ALEXC_CACHE    # the cache's sources
export ALEXC_FAKE_CUDA_EMU=$emu_header ALEXC_FAKE_CUDA_CXX=$cxx

probe=$("$alexc" compile specs/mini-alexnet.yaml --target cuda -o "$tmp/probe.plan" 2>&1) || {
  if grep -q -e "built without the CUDA toolkit" -e "NVRTC and the CUDA runtime are not available" \
    <<<"$probe"; then
    echo "SKIP: $probe"
    exit 77
  fi
  echo "FAIL: $probe"
  exit 1
}

failures=0 cases=0
verdict() { if [ "$1" -eq 0 ]; then echo OK; else echo FAIL; fi; }
fail() {  # fail WHAT OUTPUT_FILE
  echo "FAIL: $1"
  sed 's/^/    /' "$2"
  failures=$((failures + 1))
}

# run_case SPEC OPTIONS CONV PRECISION: compile (filling the cache the fake builds the
# CPU modules from), run every GPU count and seed.
run_case() {
  local spec=$1 opts=$2 conv=$3 precision=$4 plan=$tmp/model.plan gpus seed rc
  local what="$spec ${opts:-fused} --conv $conv --precision $precision" gpus_list=1 result
  # shellcheck disable=SC2086
  if ! "$alexc" compile "$spec" --target cuda $opts --conv "$conv" --precision "$precision" \
    -o "$plan" >"$tmp/out" 2>&1; then
    fail "$what: compiling" "$tmp/out"
    return
  fi
  case $opts in *--devices*) gpus_list="1 2" ;; esac
  for gpus in $gpus_list; do
    for seed in $SEEDS; do
      cases=$((cases + 1))
      # shellcheck disable=SC2086
      LD_LIBRARY_PATH=$fake_lib ALEXC_FAKE_CUDA_GPUS=$gpus ALEXC_FAKE_CUDA_SEED=$seed \
        "$alexc" run "$spec" --seed 1 --scheme fan-in --random 3 $opts --target cuda \
        --conv "$conv" --precision "$precision" --compare-ref >"$tmp/out" 2>&1
      rc=$?
      result=$(grep -m1 -o "max rel err [^ ]*" "$tmp/out")
      printf '  %-38s %-21s %-6s %-4s  %d GPU(s)  seed %s  %-22s %s\n' "$spec" "${opts:-fused}" \
        "$conv" "$precision" "$gpus" "$seed" "${result:-}" "$(verdict $rc)"
      [ $rc -eq 0 ] || fail "$what, $gpus fake GPU(s), seed $seed" "$tmp/out"
    done
  done
}

for entry in "${CASES[@]}"; do
  IFS='|' read -r -a fields <<<"$entry"
  spec=${fields[0]} convs=${fields[1]}
  for opts in "${fields[@]:2}"; do
    for conv in $convs; do
      for precision in $PRECISIONS; do
        # tf32 and bf16 are for cuBLAS: --conv direct accepts only fp32
        [ "$conv" = direct ] && [ "$precision" != fp32 ] && continue
        run_case "$spec" "$opts" "$conv" "$precision"
      done
    done
  done
done

# tf32 and bf16 (cublasSgemm with TF32 math, cublasGemmEx on bfloat16; weights
# converted at upload; fc inputs converted in chunks) on a few cases: the full matrix
# in every precision would double the run time.
run_case specs/mini-alexnet.yaml "--devices 2" gemm tf32
run_case specs/mini-alexnet.yaml "--devices 2" gemm bf16
run_case specs/mini-alexnet.yaml "--no-fuse" gemm bf16
# --layer: the network cut at a layer, compiled and compared there.
run_case specs/mini-alexnet.yaml "--layer norm1 --devices 2" gemm fp32
run_case specs/mini-alexnet.yaml "--layer conv3 --no-fuse" direct fp32
run_case specs/mini-alexnet.yaml "--layer fc5" gemm bf16
# --conv implicit: shared memory and __syncthreads(), fibers in the fake's block runner.
run_case specs/mini-alexnet.yaml "--devices 2" implicit fp32
# --conv fused: the conv node in one kernel, its stages on the tile in shared memory.
run_case specs/mini-alexnet.yaml "" fused fp32
run_case specs/mini-alexnet.yaml "--devices 2" fused fp32
# Tensor cores in the generated kernels: wmma through the emulated <mma.h>.
run_case specs/mini-alexnet.yaml "--devices 2" fused tf32
run_case specs/mini-alexnet.yaml "--no-fuse" implicit bf16

# alexc bench: the timing path (an event pair around every step, cuEventElapsedTime,
# cuMemGetInfo), fused against unfused, on two fake GPUs; the modules are the fp32 ones
# built above.
cases=$((cases + 1))
LD_LIBRARY_PATH=$fake_lib ALEXC_FAKE_CUDA_GPUS=2 "$alexc" bench specs/mini-alexnet.yaml \
  --target cuda --devices 2 --batch 3 --runs 2 --warmup 1 --compare-unfused >"$tmp/out" 2>&1
rc=$?
printf '  %-38s %-21s %-6s %-4s  2 GPU(s)  seed 1  %-22s %s\n' "alexc bench mini-alexnet" \
  "--compare-unfused" gemm fp32 "" "$(verdict $rc)"
[ $rc -eq 0 ] || fail "alexc bench mini-alexnet --devices 2 --compare-unfused" "$tmp/out"
# CUDA graphs (runtime/cuda.c): every `alexc run` above on one fake GPU replayed a
# capture of its steps (the fake checks the capture: joined streams, nothing CUDA
# refuses while capturing); here a bench shows the replays, and the same bench with
# --no-graph issues the steps one by one.
cases=$((cases + 1))
LD_LIBRARY_PATH=$fake_lib ALEXC_FAKE_CUDA_GPUS=1 "$alexc" bench specs/mini-alexnet.yaml \
  --target cuda --devices 2 --batch 3 --runs 2 --warmup 1 >"$tmp/out" 2>&1
rc=$?
grep -q "replayed 1 capture of the batch's steps as a CUDA graph (3 launches)" "$tmp/out" || rc=1
LD_LIBRARY_PATH=$fake_lib ALEXC_FAKE_CUDA_GPUS=1 "$alexc" bench specs/mini-alexnet.yaml \
  --target cuda --devices 2 --batch 3 --runs 2 --warmup 1 --no-graph >"$tmp/out2" 2>&1 || rc=1
! grep -q "CUDA graph" "$tmp/out2" || rc=1
printf '  %-38s %-21s %-6s %-4s  1 GPU(s)  seed 1  %-22s %s\n' "alexc bench mini-alexnet" \
  "--devices 2, graphs" gemm fp32 "" "$(verdict $rc)"
[ $rc -eq 0 ] || { cat "$tmp/out2" >>"$tmp/out"; fail "alexc bench with CUDA graphs on one fake GPU" "$tmp/out"; }
echo "$cases case(s), $failures failure(s)"
[ $failures -eq 0 ]
