#!/usr/bin/env bash
# `alexc import` (label 'onnx'): the models tests/onnx/make_onnx.py exported from PyTorch
# are imported, run with `alexc run` on the saved input, and compared with PyTorch's
# output; models alexc must refuse get one message naming the node and exit 1, and a
# failed import leaves existing files as they were. Usage: run.sh ALEXC (from the root).
set -euo pipefail
alexc="$1"
dir=tests/onnx
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# PyTorch computed in float32 and so does alexc (with double sums in places): the
# differences seen are 1e-7 to 5e-7 relative to each output's largest value.
tolerance=1e-5
for case in conv_lrn_pool branches matmul ceil_pool asym_pads same_upper; do
  "$alexc" import "$dir/$case.onnx" -o "$tmp/$case.yaml" --weights "$tmp/$case.safetensors" \
    >/dev/null || fail "$case: import"
  "$alexc" run "$tmp/$case.yaml" --weights "$tmp/$case.safetensors" --input "$dir/$case.in.npy" \
    --output "$tmp/$case.npy" >/dev/null || fail "$case: run"
  "$alexc" compare "$tmp/$case.npy" "$dir/$case.out.npy" --tolerance $tolerance ||
    fail "$case: alexc's output differs from PyTorch's"
done

# Conventions and names: ONNX's LRN alpha 5e-3 with size 5 is the spec's 1e-3; layers are
# named after torchvision-style weights and module paths.
spec="$tmp/conv_lrn_pool.yaml"
grep -q "name: features.2, op: lrn, inputs: features.1, size: 5, alpha: 0.000999999977" "$spec" ||
  fail "LRN alpha not divided by size, or names not kept: $(grep lrn "$spec")"
grep -q "name: classifier.1, op: fc, inputs: classifier.0, out: 10, bias: true" "$spec" ||
  fail "Gemm not imported as classifier.1"
# The comparison above would see alpha left undivided (so it is a real check).
sed 's/alpha: 0.000999999977[0-9]*/alpha: 0.005/' "$spec" > "$tmp/wrong.yaml"
"$alexc" run "$tmp/wrong.yaml" --weights "$tmp/conv_lrn_pool.safetensors" \
  --input "$dir/conv_lrn_pool.in.npy" --output "$tmp/wrong.npy" >/dev/null
if "$alexc" compare "$tmp/wrong.npy" "$dir/conv_lrn_pool.out.npy" --tolerance $tolerance \
  >/dev/null; then
  fail "an undivided LRN alpha still matches PyTorch: the comparison cannot fail"
fi
grep -q "op: fc, inputs: Flatten, out: 11, bias: true" "$tmp/matmul.yaml" ||
  fail "MatMul+Add is not one fc layer with a bias"
# Padding and rounding kept: ONNX pads [top, left, bottom, right] are the spec's order,
# SAME_UPPER is `pad: same`, ceil_mode=1 is `ceil_mode: true`.
grep -qF "pad: [0, 0, 1, 1]" "$tmp/asym_pads.yaml" || fail "asym_pads: $(cat "$tmp/asym_pads.yaml")"
grep -qF "stride: 2, pad: same" "$tmp/same_upper.yaml" || fail "same_upper: $(cat "$tmp/same_upper.yaml")"
grep -qF "pad: 1, ceil_mode: true" "$tmp/ceil_pool.yaml" || fail "ceil_pool: $(cat "$tmp/ceil_pool.yaml")"

# A hand-written model (make_onnx.py's protobuf encoder) imports: the error cases below
# written the same way fail for their defect alone.
"$alexc" import "$dir/good_conv.onnx" -o "$tmp/good.yaml" --weights "$tmp/good.safetensors" \
  >/dev/null || fail "good_conv: import"

"$alexc" import "$dir/odd_names.onnx" -o "$tmp/odd.yaml" --weights "$tmp/odd.safetensors" \
  >/dev/null || fail "odd_names: import"
"$alexc" import "$dir/dropout13.onnx" -o "$tmp/drop.yaml" --weights "$tmp/drop.safetensors" \
  >/dev/null || fail "dropout13: import"
grep -qF "name: drop, op: dropout, inputs: conv, p: 0.25}" "$tmp/drop.yaml" ||
  fail "dropout13: the ratio input is not p: $(cat "$tmp/drop.yaml")"
m64=$(printf 'm%.0s' {1..64})
for layer in "name: weird_na_me_1_Conv, op: conv" "name: relu, op: relu, inputs: weird_na_me_1_Conv" \
  "name: relu_2, op: relu, inputs: relu}" "name: $m64, op: relu, inputs: relu_2}"; do
  grep -qF "$layer" "$tmp/odd.yaml" || fail "odd_names: no '$layer' in: $(cat "$tmp/odd.yaml")"
done

# Refusals: exit 1, one message naming the node; existing outputs untouched.
echo old-spec > "$tmp/keep.yaml"
echo old-weights > "$tmp/keep.safetensors"
refuse() {  # MODEL PATTERN...
  local model=$1 rc=0
  shift
  "$alexc" import "$model" -o "$tmp/keep.yaml" --weights "$tmp/keep.safetensors" \
    2>"$tmp/err" >/dev/null || rc=$?
  [ "$rc" -eq 1 ] || fail "$model: exit $rc, want 1: $(cat "$tmp/err")"
  for pattern in "$@"; do
    grep -qF -- "$pattern" "$tmp/err" || fail "$model: no '$pattern' in: $(cat "$tmp/err")"
  done
  [ "$(cat "$tmp/keep.yaml")" = old-spec ] && [ "$(cat "$tmp/keep.safetensors")" = old-weights ] ||
    fail "$model: a failed import changed the output files"
  ls "$tmp" | grep -q '\.tmp\.' && fail "$model: a temporary file was left behind"
  return 0
}
refuse "$dir/unsupported.onnx" "3 unsupported ops" "node '/Sigmoid': op 'Sigmoid' is not supported" \
  "node '/Tanh': op 'Tanh' is not supported" "node '/Pad': op 'Pad' is not supported"
refuse "$dir/avg_pool.onnx" "node '/AveragePool' (AveragePool): only a 1x1 AveragePool"
refuse "$dir/dilated.onnx" "node '/conv/Conv' (Conv): dilations (2, 2) are not supported"
refuse "$dir/same_lower.onnx" "node '/conv/Conv' (Conv): auto_pad 'SAME_LOWER' is not supported"
refuse "$dir/dropout_mask.onnx" "node '/drop/Dropout' (Dropout): its mask output is used"
refuse "$dir/short_tensor.onnx" "tensor 'conv.weight' has 400 bytes of data; its dims need 108"

# Not ONNX at all: garbage, empty, and the model cut short at many places inside its graph.
printf 'garbage\n%.0s' {1..512} > "$tmp/garbage.onnx"  # 4 KiB of text
refuse "$tmp/garbage.onnx" "not an ONNX model"
: > "$tmp/empty.onnx"
refuse "$tmp/empty.onnx" "not an ONNX model"
size=$(stat -c %s "$dir/conv_lrn_pool.onnx")
for ((cut = 1; cut < size - 64; cut += 1021)); do
  head -c $cut "$dir/conv_lrn_pool.onnx" > "$tmp/cut.onnx"
  refuse "$tmp/cut.onnx" "not an ONNX model"
done
refuse "$tmp/missing.onnx" "missing.onnx"

# A spec that cannot be written (its directory does not exist) after the weights could
# be: the existing weights must stay as they were, and no temporary file remain.
rc=0
"$alexc" import "$dir/good_conv.onnx" -o "$tmp/no-such-dir/keep.yaml" \
  --weights "$tmp/keep.safetensors" 2>"$tmp/err" >/dev/null || rc=$?
[ "$rc" -eq 1 ] || fail "unwritable spec: exit $rc, want 1"
[ "$(cat "$tmp/keep.safetensors")" = old-weights ] ||
  fail "unwritable spec: the weights were replaced anyway"
ls "$tmp" | grep -q '\.import\.' && fail "unwritable spec: a temporary file was left behind"

# Usage errors exit 2.
"$alexc" import --help | grep -q "usage: alexc import" || fail "--help"
for args in "" "$dir/matmul.onnx" "$dir/matmul.onnx -o $tmp/a --weights $tmp/a" \
  "$dir/matmul.onnx -o $tmp/a --weights $tmp/b --name 9x" "--bogus"; do
  rc=0
  # shellcheck disable=SC2086
  "$alexc" import $args 2>/dev/null >/dev/null || rc=$?
  [ "$rc" -eq 2 ] || fail "import $args: exit $rc, want 2"
done
echo "onnx import: ok"
