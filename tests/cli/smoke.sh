#!/usr/bin/env bash
# The CLI as a user meets it: help, exit codes, the AlexNet parameter count, and a
# run that writes its output atomically.
set -euo pipefail
alexc="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$alexc" --help | grep >/dev/null "golden" || fail "--help lists no subcommands"
for c in check dump init input run golden; do
  "$alexc" "$c" --help >/dev/null || fail "$c --help"
done
set +e
"$alexc" nosuch 2>/dev/null; [ $? -eq 2 ] || fail "unknown command must exit 2"
"$alexc" check 2>/dev/null; [ $? -eq 2 ] || fail "missing SPEC must exit 2"
"$alexc" run specs/alexnet.yaml --seed x --random 1 2>/dev/null; [ $? -eq 2 ] || fail "bad --seed must exit 2"
"$alexc" check /nonexistent.yaml 2>/dev/null; [ $? -eq 1 ] || fail "missing file must exit 1"
set -e

"$alexc" check specs/alexnet.yaml > "$tmp/check.txt"
grep -q "^60,965,224 parameters, 724,406,816 multiply-accumulates per image" "$tmp/check.txt" ||
  fail "alexnet parameter/MAC totals"

# init -> run from the file equals run from the seed.
spec="$tmp/small.yaml"
cat > "$spec" <<'YAML'
name: small
input: {channels: 3, height: 16, width: 16}
layers:
  - {name: conv1, op: conv, out: 8, kernel: 3, pad: 1}
  - {name: relu1, op: relu}
  - {name: flat, op: flatten}
  - {name: fc, op: fc, out: 10}
  - {name: prob, op: softmax}
YAML
"$alexc" init "$spec" --seed 7 -o "$tmp/w.safetensors" >/dev/null
"$alexc" input "$spec" --seed 3 --batch 4 -o "$tmp/x.npy"
"$alexc" run "$spec" --weights "$tmp/w.safetensors" --input "$tmp/x.npy" --output "$tmp/y1.npy"
"$alexc" run "$spec" --seed 7 --input "$tmp/x.npy" --output "$tmp/y2.npy"
cmp -s "$tmp/y1.npy" "$tmp/y2.npy" || fail "weights from file and from seed differ"
"$alexc" run "$spec" --seed 7 --random 2 --top 3 | grep >/dev/null "^image 1: top-3" || fail "--top"
ls "$tmp" | grep >/dev/null tmp && fail "a temporary file was left behind"

# An input of the wrong shape is refused, and the output file is not touched.
"$alexc" input specs/alexnet.yaml --seed 1 --batch 1 -o "$tmp/big.npy"
cp "$tmp/y1.npy" "$tmp/keep.npy"
if "$alexc" run "$spec" --seed 7 --input "$tmp/big.npy" --output "$tmp/y1.npy" 2>"$tmp/err"; then
  fail "a wrong-shaped input was accepted"
fi
grep -q "big.npy: input has shape (1, 3, 227, 227), want (N, 3, 16, 16)" "$tmp/err" || fail "shape message: $(cat "$tmp/err")"
cmp -s "$tmp/y1.npy" "$tmp/keep.npy" || fail "output was modified by a failed run"

# Weights for another network: message names the file and the tensor.
"$alexc" init specs/alexnet.yaml --seed 1 -o "$tmp/alex.safetensors" >/dev/null
if "$alexc" run "$spec" --weights "$tmp/alex.safetensors" --random 1 2>"$tmp/err"; then
  fail "mismatched weights accepted"
fi
grep -q "alex.safetensors: tensor 'conv1.weight' has shape \[96, 3, 11, 11\], want \[8, 3, 3, 3\]" "$tmp/err" ||
  fail "weights message: $(cat "$tmp/err")"
# A misspelt tensor name: a did-you-mean, and the file's stray tensor named.
LC_ALL=C sed 's/"conv1\.weight"/"conv1.weigth"/' "$tmp/w.safetensors" > "$tmp/typo.safetensors"
if "$alexc" run "$spec" --weights "$tmp/typo.safetensors" --random 1 2>"$tmp/err"; then
  fail "misspelt weights accepted"
fi
grep -q "tensor 'conv1.weight' is missing; did you mean 'conv1.weigth'?.*does not use: 'conv1.weigth'" "$tmp/err" ||
  fail "misspelt weights message: $(cat "$tmp/err")"
# F16 weights are converted on load, with a note.
printf 'name: tiny\ninput: {channels: 1, height: 1, width: 2}\nlayers:\n  - {name: flat, op: flatten}\n  - {name: fc, op: fc, out: 1}\n' > "$tmp/tiny.yaml"
perl -e 'my $h = q({"fc.weight":{"dtype":"F16","shape":[1,2],"data_offsets":[0,4]},) .
                 q("fc.bias":{"dtype":"F16","shape":[1],"data_offsets":[4,6]}});
         binmode STDOUT; print pack("Q<", length $h), $h, pack("v*", 0x3c00, 0x4000, 0x3800);' \
  > "$tmp/tiny.safetensors"
"$alexc" run "$tmp/tiny.yaml" --weights "$tmp/tiny.safetensors" --random 1 >/dev/null 2>"$tmp/err" ||
  fail "F16 weights refused: $(cat "$tmp/err")"
grep -q "converted 2 F16 tensors to float32" "$tmp/err" || fail "no conversion note: $(cat "$tmp/err")"

# compare: the tolerance given, or a precision's (alexc run --compare-ref's limits).
npy() {  # npy FILE VALUES...: a float32 .npy of shape (number of values,)
  perl -e 'my $f = shift; my $h = "{\x27descr\x27: \x27<f4\x27, \x27fortran_order\x27: False, " .
             "\x27shape\x27: (" . scalar(@ARGV) . ",), }";
           $h .= " " x (63 - (10 + length $h) % 64) . "\n";
           open(my $o, ">", $f) or die "$f: $!"; binmode $o;
           print $o "\x93NUMPY\x01\x00", pack("v", length $h), $h, pack("f<*", @ARGV);' "$@"
}
npy "$tmp/want.npy" 1 2 4
npy "$tmp/got.npy" 1 2 4.08    # 0.08 / 4 = 2e-2: over tf32's 1e-2, under bf16's 3e-2
npy "$tmp/short.npy" 1 2
npy "$tmp/nan.npy" 1 NaN 4
compare_rc() {  # compare_rc WANT_RC ARGS...
  local want=$1 rc=0
  shift
  "$alexc" compare "$@" >"$tmp/out" 2>&1 || rc=$?
  [ $rc -eq "$want" ] || fail "alexc compare $*: exit $rc, want $want: $(cat "$tmp/out")"
}
compare_rc 0 "$tmp/want.npy" "$tmp/want.npy"
grep -q "^max rel err 0 .*tolerance 0.0001): OK" "$tmp/out" || fail "compare output: $(cat "$tmp/out")"
compare_rc 1 "$tmp/got.npy" "$tmp/want.npy"
compare_rc 1 "$tmp/got.npy" "$tmp/want.npy" --precision tf32
compare_rc 0 "$tmp/got.npy" "$tmp/want.npy" --precision bf16
compare_rc 0 "$tmp/got.npy" "$tmp/want.npy" --tolerance 0.03
compare_rc 1 "$tmp/short.npy" "$tmp/want.npy"
grep -q "different shapes" "$tmp/out" || fail "compare of two shapes: $(cat "$tmp/out")"
compare_rc 1 "$tmp/nan.npy" "$tmp/want.npy" --tolerance 1e9
compare_rc 2 "$tmp/got.npy" "$tmp/want.npy" --precision fp16
"$alexc" compare --help | grep -q "tf32 0.01, bf16 0.03" || fail "compare --help limits"
echo "cli smoke: ok"
