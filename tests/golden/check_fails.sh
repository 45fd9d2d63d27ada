#!/usr/bin/env bash
# The golden check can fail: a golden test that never fails proves nothing. Usage:
#   check_fails.sh ALEXC   (run from the repository root)
#
# 1. A copy of a checked-in case passes; then one element of its recorded output is
#    perturbed by flipping single mantissa bits of its float32 (CI may lack numpy, so
#    the bytes are edited with od/dd):
#      - by ~1e-3 relative (mantissa bit 14): check must exit 1, print FAIL, and name
#        that element as the worst;
#      - by ~5e-6 relative (mantissa bit 6): check must still pass (the tolerance is
#        1e-4), yet report that element as the worst with a non-zero error.
#    The element perturbed is the one of largest magnitude, so its relative change is
#    also its error relative to max|want| (see compare() in compiler/tools/cli.c).
# 2. `alexc golden record` round-trips (error exactly 0), and an output computed with
#    other weights (another seed) in place of the recorded one fails the check.
set -euo pipefail
alexc="$1"
case_dir=tests/golden/conv_groups4  # 12x4x4, batch 2; its spec is stored beside it
layer=conv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The byte editing below reads float32 data in host order; the .npy is little-endian.
[ "$(printf '\001\000' | od -An -t u2 | tr -d ' ')" = 1 ] || fail "this test assumes a little-endian host"

cp -r "$case_dir" "$tmp/case"
npy="$tmp/case/$layer.npy"
"$alexc" golden check "$tmp/case" > "$tmp/out" || fail "the unmodified copy of $case_dir fails: $(cat "$tmp/out")"

# .npy v1: 6-byte magic, 2 version bytes, 2-byte little-endian header length, header.
read -r lo hi < <(od -An -t u1 -j 8 -N 2 "$npy")
data=$((10 + lo + 256 * hi))
# shape from the header, e.g. "'shape': (2, 12, 4, 4), " -> "2 12 4 4"
read -r n c h w < <(head -c "$data" "$npy" | sed -n "s/.*'shape': (\([0-9, ]*\)).*/\1/p" | tr -d ',')
# The flat index of the element of largest magnitude.
at=$(od -An -v -t f4 -j "$data" "$npy" |
     awk '{ for (i = 1; i <= NF; i++) { v = $i < 0 ? -$i : $i; if (v > m) { m = v; at = k } k++ } }
          END { print at }')
want_pos="[$((at / (c * h * w))), $((at / (h * w) % c)), $((at / w % h)), $((at % w))]"

# Flips bit `bit` of byte `byte` (0 = least significant) of element `at`, in place.
flip() {
  local file=$1 byte=$2 bit=$3 pos old
  pos=$((data + 4 * at + byte))
  old=$(od -An -t u1 -j "$pos" -N 1 "$file" | tr -d ' ')
  printf "\\$(printf %03o $((old ^ (1 << bit))))" | dd of="$file" bs=1 seek="$pos" conv=notrunc status=none
}

# Mantissa bit 14 (byte 1, bit 6): the value changes by 2^-9 of its exponent's power of
# two, i.e. between 9.8e-4 and 2e-3 of itself.
cp "$npy" "$tmp/orig.npy"
flip "$npy" 1 6
set +e
"$alexc" golden check "$tmp/case" > "$tmp/out"
rc=$?
set -e
[ $rc -eq 1 ] || fail "a 1e-3 perturbation: check exited $rc, want 1: $(cat "$tmp/out")"
grep -q "^FAIL$" "$tmp/out" || fail "no FAIL verdict: $(cat "$tmp/out")"
line=$(grep "^  $layer " "$tmp/out") || fail "no report line for $layer: $(cat "$tmp/out")"
case "$line" in *"worst $want_pos "*"FAIL") ;; *) fail "want worst $want_pos and FAIL in: $line" ;; esac
rel=$(sed -n 's/.*max rel err \([^ ]*\).*/\1/p' <<<"$line")
awk -v r="$rel" 'BEGIN { exit !(r > 5e-4 && r < 3e-3) }' || fail "rel err $rel, want about 1e-3: $line"

# Mantissa bit 6 (byte 0, bit 6): a change of 2^-17, 3.8e-6 to 7.6e-6 of the value.
cp "$tmp/orig.npy" "$npy"
flip "$npy" 0 6
"$alexc" golden check "$tmp/case" > "$tmp/out" || fail "a 5e-6 perturbation failed the check: $(cat "$tmp/out")"
line=$(grep "^  $layer " "$tmp/out")
case "$line" in *"worst $want_pos "*" ok") ;; *) fail "want worst $want_pos and ok in: $line" ;; esac
rel=$(sed -n 's/.*max rel err \([^ ]*\).*/\1/p' <<<"$line")
awk -v r="$rel" 'BEGIN { exit !(r > 1e-6 && r < 1e-5) }' || fail "rel err $rel, want about 5e-6: $line"

# 2. record -> check is exact; another seed's output in place of the recorded one fails.
spec="$case_dir/spec.yaml"
"$alexc" golden record "$spec" --seed 5 --scheme spec --batch 2 -o "$tmp/rec" > /dev/null
"$alexc" golden check "$tmp/rec" > "$tmp/out" || fail "a fresh recording fails: $(cat "$tmp/out")"
grep -q "^  $layer .*max rel err 0 " "$tmp/out" || fail "a fresh recording is not exact: $(cat "$tmp/out")"
"$alexc" run "$spec" --seed 6 --scheme spec --random 2 --output "$tmp/rec/$layer.npy"
set +e
"$alexc" golden check "$tmp/rec" > "$tmp/out"
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "^FAIL$" "$tmp/out" && grep -q "^  $layer .* worst .* FAIL$" "$tmp/out" ||
  fail "other weights' output passed the check (exit $rc): $(cat "$tmp/out")"
echo "golden check_fails: ok"
