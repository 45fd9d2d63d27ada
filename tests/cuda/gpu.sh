#!/bin/bash
# On a machine with a GPU: alexc run --target cuda against the reference executor on
# every spec, fused and unfused, on one and two devices (two logical devices share a
# GPU as two streams when there is only one): --conv gemm, direct, implicit and fused in
# fp32; gemm, implicit and fused on tensor cores in tf32; gemm and fused in bf16; each
# within its precision's tolerance (alexc run --help). Without a CUDA driver or GPU it
# exits 77 (ctest: skipped).
#
# With --compile-only (no GPU needed: the ctest cuda.nvrtc_matrix), every case is
# compiled with NVRTC for sm_90, the H100/H200's architecture, instead of run: the
# kernels do not depend on the batch, so these are the modules the GPU run loads, and
# a kernel that ptxas refuses (too much shared memory, say) fails here, in CI. Without
# NVRTC it exits 77.
#
# usage: tests/cuda/gpu.sh ALEXC [--compile-only] [SPEC...]
set -u
alexc=$1
shift
compile_arch=
if [ "${1:-}" = --compile-only ]; then
  compile_arch=sm_90
  shift
fi
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(specs/*.yaml tests/passes/graphs/*.yaml)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -n "$compile_arch" ]; then
  export ALEXC_CACHE=$tmp/cache  # variants share their identical kernels, not other runs'
  probe=$("$alexc" compile specs/mini-alexnet.yaml --target cuda --arch "$compile_arch" \
    -o "$tmp/probe.plan" 2>&1)
  rc=$?
else
  probe=$("$alexc" run specs/mini-alexnet.yaml --seed 1 --random 1 --target cuda 2>&1)
  rc=$?
fi
if [ $rc -ne 0 ]; then
  if grep -q -e "no CUDA driver found" -e "no GPU" -e "built without the CUDA toolkit" \
    -e "NVRTC and the CUDA runtime are not available" <<<"$probe"; then
    echo "SKIP: $probe"
    exit 77
  fi
  echo "FAIL: $probe"
  exit 1
fi

# compare GOT WANT PRECISION: max |got - want| / max |want| against the precision's
# tolerance (alexc compare --precision).
compare() { "$alexc" compare "$1" "$2" --precision "$3"; }

# After a failure: the first layer whose output differs (each layer's network compiled
# with --layer and compared against the reference there), to say where to look.
first_bad_layer() {  # first_bad_layer DIR SPEC BATCH CONV PRECISION OPTIONS...
  local dir=$1 spec=$2 batch=$3 conv=$4 precision=$5 layer
  shift 5
  for layer in $("$alexc" check "$spec" | awk 'NR > 3 && $1 ~ /^[A-Za-z_]/ && $1 != "total" { print $1 }'); do
    # shellcheck disable=SC2068
    if ! "$alexc" run "$spec" --seed 1 --scheme fan-in --random "$batch" $@ --target cuda \
      --conv "$conv" --precision "$precision" --layer "$layer" --compare-ref >"$dir/bisect" 2>&1; then
      echo "    first layer that differs: $layer ($(grep -m1 -o "max rel err [^ ]*" "$dir/bisect" || tail -1 "$dir/bisect"))"
      return
    fi
  done
  echo "    every layer matches on its own: the difference is in how the network's end is run"
}

# Every variant of one spec, its files in DIR: run and compared with the reference, or
# with --compile-only compiled for $compile_arch. Prints a line per variant and exits
# with the number of failures.
check_spec() {  # check_spec SPEC DIR
  local spec=$1 dir=$2 batch=3 failures=0 opts variant rc result
  case $spec in specs/alexnet*) batch=4 ;; esac
  mkdir -p "$dir"
  # The oracle: the reference executor, unfused on one device (the passes do not
  # change its results: tests/passes/test_equivalence.c).
  if [ -z "$compile_arch" ]; then
    "$alexc" run "$spec" --seed 1 --scheme fan-in --random $batch --no-fuse --output "$dir/ref.npy" || {
      echo "FAIL: $spec: the reference run"; return 1; }
  fi
  for opts in "" "--no-fuse" "--devices 2" "--no-fuse --devices 2"; do
    for variant in "${variants[@]}"; do
      # shellcheck disable=SC2086  # "CONV PRECISION" splits into $1 and $2
      set -- $variant
      result=
      # shellcheck disable=SC2086
      if [ -n "$compile_arch" ]; then
        "$alexc" compile "$spec" --target cuda --arch "$compile_arch" $opts --conv "$1" \
          --precision "$2" -o "$dir/model.plan" >/dev/null 2>"$dir/err" && result=compiled
      else
        "$alexc" run "$spec" --seed 1 --scheme fan-in --random $batch $opts --target cuda \
          --conv "$1" --precision "$2" --output "$dir/gpu.npy" &&
          result=$(compare "$dir/gpu.npy" "$dir/ref.npy" "$2" | sed 's/ (.*//'
                   exit "${PIPESTATUS[0]}")
      fi
      rc=$?
      printf '  %-40s %-8s %-4s %-22s %s %s\n' "$spec" "$1" "$2" "${opts:-fused}" "${result:-}" \
        "$([ $rc -eq 0 ] && echo OK || echo FAIL)"
      if [ $rc -ne 0 ]; then
        failures=$((failures + 1))
        if [ -n "$compile_arch" ]; then
          sed 's/^/    /' "$dir/err" | head -20
        else
          # shellcheck disable=SC2086
          first_bad_layer "$dir" "$spec" $batch "$1" "$2" $opts
        fi
      fi
    done
  done
  return $((failures < 255 ? failures : 255))
}

# --conv and --precision pairs: every one, or $ALEXC_GPU_TEST_VARIANTS ("gemm fp32,fused
# tf32": the rehearsal against the fake driver runs a few, each costing a CPU build).
variants=("gemm fp32" "direct fp32" "implicit fp32" "fused fp32" "gemm tf32" "implicit tf32"
          "fused tf32" "fused bf16" "gemm bf16")
if [ -n "${ALEXC_GPU_TEST_VARIANTS:-}" ]; then
  IFS=, read -r -a variants <<<"$ALEXC_GPU_TEST_VARIANTS"
fi

# The specs run side by side ($ALEXC_GPU_TEST_JOBS at a time, default 4: each run is
# mostly NVRTC and host work, and the GPU has room for several), their reports printed
# in order once all are done.
jobs_max=${ALEXC_GPU_TEST_JOBS:-4}
for i in "${!specs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
    wait -n || true
  done
  { check_spec "${specs[$i]}" "$tmp/$i" >"$tmp/$i.log" 2>&1; echo $? >"$tmp/$i.rc"; } &
done
wait
failures=0
for i in "${!specs[@]}"; do
  cat "$tmp/$i.log"
  failures=$((failures + $(cat "$tmp/$i.rc" 2>/dev/null || echo 1)))
done
echo "$failures failure(s)"
[ $failures -eq 0 ]
