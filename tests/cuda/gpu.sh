#!/bin/bash
# On a machine with a GPU: alexc run --target cuda against --target ref on every spec,
# fused and unfused, on one and two devices (two logical devices may share one GPU),
# --conv gemm and --conv direct, within 1e-4 relative. Without a CUDA driver or GPU it
# exits 77 (ctest: skipped).
#
# usage: tests/cuda/gpu.sh ALEXC
set -u
alexc=$1
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

compare() {  # compare GOT WANT: max |got - want| / max |want| <= 1e-4
  python3 - "$1" "$2" <<'PY'
import sys, numpy as np
got, want = np.load(sys.argv[1]), np.load(sys.argv[2])
rel = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
print(f"max rel err {rel:.3g}")
sys.exit(0 if got.shape == want.shape and np.isfinite(got).all() and rel <= 1e-4 else 1)
PY
}

failures=0
for spec in specs/*.yaml tests/passes/graphs/*.yaml; do
  batch=3
  case $spec in specs/alexnet*) batch=8 ;; esac
  for opts in "" "--no-fuse" "--devices 2" "--no-fuse --devices 2"; do
    # shellcheck disable=SC2086
    "$alexc" run "$spec" --seed 1 --scheme fan-in --random $batch $opts --output "$tmp/ref.npy" || {
      echo "FAIL: $spec $opts: the reference run"; failures=$((failures + 1)); continue; }
    for conv in gemm direct; do
      # shellcheck disable=SC2086
      "$alexc" run "$spec" --seed 1 --scheme fan-in --random $batch $opts --target cuda \
        --conv $conv --output "$tmp/gpu.npy" &&
        result=$(compare "$tmp/gpu.npy" "$tmp/ref.npy")
      rc=$?
      printf '  %-45s %-6s %-24s %s %s\n' "$spec" "$conv" "${opts:-fused}" "${result:-}" "$([ $rc -eq 0 ] && echo OK || echo FAIL)"
      [ $rc -eq 0 ] || failures=$((failures + 1))
      result=
    done
  done
done
echo "$failures failure(s)"
[ $failures -eq 0 ]
