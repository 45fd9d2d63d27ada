#!/bin/bash
# On a machine with a GPU: alexc run --target cuda against the reference executor on
# every spec, fused and unfused, on one and two devices (two logical devices share a
# GPU as two streams when there is only one): --conv gemm, direct, implicit and fused in
# fp32; gemm, implicit and fused on tensor cores in tf32; gemm and fused in bf16; each
# within its precision's tolerance (alexc run --help). Without a CUDA driver or GPU it
# exits 77 (ctest: skipped).
#
# usage: tests/cuda/gpu.sh ALEXC [SPEC...]
set -u
alexc=$1
shift
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=(specs/*.yaml tests/passes/graphs/*.yaml)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

probe=$("$alexc" run specs/mini-alexnet.yaml --seed 1 --random 1 --target cuda 2>&1)
if [ $? -ne 0 ]; then
  if grep -q -e "no CUDA driver found" -e "no GPU" -e "built without the CUDA toolkit" <<<"$probe"; then
    echo "SKIP: $probe"
    exit 77
  fi
  echo "FAIL: $probe"
  exit 1
fi

# compare GOT WANT TOLERANCE: max |got - want| / max |want| (alexc compare).
compare() { "$alexc" compare "$1" "$2" --tolerance "$3"; }

tolerance() {  # the limits of compiler/backends/cuda/codegen.c's cuda_tolerance()
  case $1 in fp32) echo 1e-4 ;; tf32) echo 1e-2 ;; bf16) echo 3e-2 ;; esac
}

# After a failure: the first layer whose output differs (each layer's network compiled
# with --layer and compared against the reference there), to say where to look.
first_bad_layer() {  # first_bad_layer SPEC BATCH CONV PRECISION OPTIONS...
  local spec=$1 batch=$2 conv=$3 precision=$4 layer
  shift 4
  for layer in $("$alexc" check "$spec" | awk 'NR > 3 && $1 ~ /^[A-Za-z_]/ && $1 != "total" { print $1 }'); do
    # shellcheck disable=SC2068
    if ! "$alexc" run "$spec" --seed 1 --scheme fan-in --random "$batch" $@ --target cuda \
      --conv "$conv" --precision "$precision" --layer "$layer" --compare-ref >"$tmp/bisect" 2>&1; then
      echo "    first layer that differs: $layer ($(grep -m1 -o "max rel err [^ ]*" "$tmp/bisect" || tail -1 "$tmp/bisect"))"
      return
    fi
  done
  echo "    every layer matches on its own: the difference is in how the network's end is run"
}

failures=0
for spec in "${specs[@]}"; do
  batch=3
  case $spec in specs/alexnet*) batch=4 ;; esac
  # The oracle: the reference executor, unfused on one device (the passes do not
  # change its results: tests/passes/test_equivalence.c).
  "$alexc" run "$spec" --seed 1 --scheme fan-in --random $batch --no-fuse --output "$tmp/ref.npy" || {
    echo "FAIL: $spec: the reference run"; failures=$((failures + 1)); continue; }
  for opts in "" "--no-fuse" "--devices 2" "--no-fuse --devices 2"; do
    for variant in "gemm fp32" "direct fp32" "implicit fp32" "fused fp32" "gemm tf32" \
                   "implicit tf32" "fused tf32" "fused bf16" "gemm bf16"; do
      set -- $variant
      # shellcheck disable=SC2086
      "$alexc" run "$spec" --seed 1 --scheme fan-in --random $batch $opts --target cuda \
        --conv "$1" --precision "$2" --output "$tmp/gpu.npy" &&
        result=$(compare "$tmp/gpu.npy" "$tmp/ref.npy" "$(tolerance "$2")" | sed 's/ (.*//'
                 exit "${PIPESTATUS[0]}")
      rc=$?
      printf '  %-40s %-8s %-4s %-22s %s %s\n' "$spec" "$1" "$2" "${opts:-fused}" "${result:-}" \
        "$([ $rc -eq 0 ] && echo OK || echo FAIL)"
      if [ $rc -ne 0 ]; then
        failures=$((failures + 1))
        # shellcheck disable=SC2086
        first_bad_layer "$spec" $batch "$1" "$2" $opts
      fi
      result=
    done
  done
done
echo "$failures failure(s)"
[ $failures -eq 0 ]
