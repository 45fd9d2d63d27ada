#!/usr/bin/env bash
# The pass-related CLI: dump --after/--print-after-all/--time-passes, plan, and
# run/golden with --no-fuse and --devices giving the same numbers.
set -euo pipefail
# Pipes into grep use "grep >/dev/null", not "grep -q": -q exits at the first match,
# and a writer that is still writing then dies of SIGPIPE, which pipefail reports.
alexc="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
spec=tests/passes/graphs/groups4.yaml

"$alexc" dump "$spec" --after fuse | grep >/dev/null "# fused: conv-relu" || fail "dump --after fuse"
"$alexc" dump "$spec" --after partition --devices 3 | grep >/dev/null "transfer \[" || fail "dump --after partition"
[ "$("$alexc" dump "$spec" --print-after-all | grep -c '^// after')" = 3 ] || fail "--print-after-all"
# (stderr to a file: the timings come after the dump)
"$alexc" dump "$spec" --time-passes 2>"$tmp/times" >/dev/null
grep -q "partition" "$tmp/times" || fail "--time-passes"
"$alexc" dump "$spec" --no-fuse --after fuse | grep >/dev/null "fused" && fail "--no-fuse still fused"
set +e
"$alexc" dump "$spec" --after nosuch 2>/dev/null; [ $? -eq 2 ] || fail "unknown pass must exit 2"
"$alexc" dump "$spec" --fuse=conv-pool 2>/dev/null; [ $? -eq 2 ] || fail "unknown pattern must exit 2"
"$alexc" plan "$spec" --devices 9 2>/dev/null; [ $? -eq 2 ] || fail "--devices 9 must exit 2"
set -e

"$alexc" plan specs/alexnet.yaml --devices 2 > "$tmp/plan"
grep -q "pool2 .*channels \[128,256) d1 -> d0 .*86,528 bytes/image" "$tmp/plan" || fail "plan: conv3 input"
grep -q "^d0 .*30,483,340" "$tmp/plan" || fail "plan: parameters per device"

# The same output fused or not, on one device or three.
"$alexc" run "$spec" --seed 3 --scheme fan-in --random 2 --output "$tmp/a.npy" --no-fuse
"$alexc" run "$spec" --seed 3 --scheme fan-in --random 2 --output "$tmp/b.npy" --devices 3
cmp -s "$tmp/a.npy" "$tmp/b.npy" || fail "fused 3-device output differs from unfused"
# An intermediate layer that fusion would hide is still reachable.
"$alexc" run "$spec" --seed 3 --random 1 --layer relu1 --output "$tmp/r.npy" --devices 2
"$alexc" golden record "$spec" --seed 4 --layers relu2,prob -o "$tmp/g" >/dev/null
"$alexc" golden check "$tmp/g" --devices 4 | grep >/dev/null PASS || fail "golden check --devices 4"
"$alexc" golden check "$tmp/g" --no-fuse | grep >/dev/null PASS || fail "golden check --no-fuse"
echo "passes cli: ok"
