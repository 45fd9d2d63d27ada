#!/bin/bash
# alexc compile --target cuda --train: the training step's source (one device, or each of
# a split's), and clear refusals of what is not done yet (an artifact) and of bad input.
#
# usage: tests/cuda/train_cli.sh ALEXC
set -u
alexc=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail=0
expect() {  # expect RC MESSAGE-PATTERN COMMAND...
  local want=$1 pattern=$2
  shift 2
  "$@" >"$out/stdout" 2>"$out/stderr"
  local rc=$?
  if [ "$rc" != "$want" ] || { [ -n "$pattern" ] && ! grep -q -- "$pattern" "$out/stdout" "$out/stderr"; }; then
    echo "FAIL: $* -> exit $rc (want $want), output:"
    cat "$out/stdout" "$out/stderr"
    fail=1
  else
    echo "ok: $* -> exit $rc"
  fi
}
"$alexc" compile specs/mini-alexnet.yaml --target cuda --train --emit-source "$out/mini"
if [ ! -s "$out/mini/train.cu" ] || ! grep -q "k_sgd_update" "$out/mini/train.cu"; then
  echo "FAIL: --train --emit-source wrote no training step"
  fail=1
fi
expect 2 "only --emit-source" "$alexc" compile specs/mini-alexnet.yaml --target cuda --train -o "$out/x.plan"
expect 0 "" "$alexc" compile specs/mini-alexnet.yaml --target cuda --train --devices 2 --emit-source "$out/d2"
if [ ! -s "$out/d2/train-device0.cu" ] || [ ! -s "$out/d2/train-device1.cu" ]; then
  echo "FAIL: --train --devices 2 wrote no per-device sources"
  fail=1
fi
expect 2 "devices" "$alexc" compile specs/mini-alexnet.yaml --target cuda --train --devices 9 --emit-source "$out/d9"
expect 1 "cannot open" "$alexc" compile "$out/missing.yaml" --target cuda --train --emit-source "$out/m"
# A network whose output is not class scores (a conv's maps): autodiff refuses it.
printf 'name: maps\ninput: {channels: 1, height: 8, width: 8}\nlayers:\n  - {name: conv1, op: conv, out: 2, kernel: 3}\n' >"$out/maps.yaml"
expect 1 "class scores" "$alexc" compile "$out/maps.yaml" --target cuda --train --emit-source "$out/maps"
# One whose output is the logits (no softmax): trained like one ending in softmax.
printf 'name: logits\ninput: {channels: 1, height: 8, width: 8}\nlayers:\n  - {name: conv1, op: conv, out: 2, kernel: 3}\n  - {name: flat, op: flatten}\n  - {name: fc, op: fc, out: 3}\n' >"$out/logits.yaml"
expect 0 "" "$alexc" compile "$out/logits.yaml" --target cuda --train --emit-source "$out/logits"
exit $fail
