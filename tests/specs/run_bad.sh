#!/usr/bin/env bash
# Every bad spec gets one clear message: `alexc check FILE` must exit 1 (not 0, not 2,
# not a signal, not a timeout) with nothing on stdout and exactly one line on stderr,
#   FILE:LINE:COL: error: MESSAGE
# at the expected place and containing the expected text.
#
# Usage: tests/specs/run_bad.sh ALEXC [CASE...]     (from the repository root)
#
# Each tests/specs/bad/NAME.yaml starts with its expectation:
#   # expect: LINE:COL: error: MESSAGE-SUBSTRING
# Cases that cannot be checked in as small files (an empty file, one over the 1 MiB
# limit, binary data, specs with thousands of layers, pathological YAML) are
# generated below into a temporary directory, each with its expectation.
set -uo pipefail
alexc="$1"
shift
dir="tests/specs/bad"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

fail() {
  echo "FAIL $1: $2"
  [ -s "$tmp/err" ] && sed 's/^/  stderr: /' "$tmp/err" | head -5
  [ -s "$tmp/out" ] && sed 's/^/  stdout: /' "$tmp/out" | head -3
  failed=$((failed + 1))
}

# check_case FILE "LINE:COL: error: MESSAGE"
check_case() {
  local file="$1" expect="$2" name
  name=$(basename "$file" .yaml)
  local loc="${expect%%: error: *}" msg="${expect#*: error: }"
  if [[ "$expect" != *": error: "* || ! "$loc" =~ ^[0-9]+:[0-9]+$ ]]; then
    fail "$name" "bad expectation '$expect' (want '# expect: LINE:COL: error: MESSAGE')"
    return
  fi
  timeout 10 "$alexc" check "$file" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 124 ]; then
    fail "$name" "timed out (a hang?)"
    return
  fi
  if [ $rc -gt 128 ]; then
    fail "$name" "killed by signal $((rc - 128)) (a crash?)"
    return
  fi
  if [ $rc -ne 1 ]; then
    fail "$name" "exit status $rc, want 1"
    return
  fi
  if [ -s "$tmp/out" ]; then
    fail "$name" "wrote to stdout"
    return
  fi
  local lines first
  lines=$(wc -l <"$tmp/err")
  first=$(head -n 1 "$tmp/err")
  if [ "$lines" -ne 1 ]; then
    fail "$name" "$lines lines on stderr, want exactly one error line"
    return
  fi
  if [[ "$first" != "$file:$loc: error: "* ]]; then
    fail "$name" "want a message starting '$file:$loc: error: '"
    return
  fi
  if [[ "$first" != *"$msg"* ]]; then
    fail "$name" "message does not contain '$msg'"
    return
  fi
  passed=$((passed + 1))
}

selected() {  # is case $1 on the command line (or is no case named)?
  [ ${#cases[@]} -eq 0 ] && return 0
  local c
  for c in "${cases[@]}"; do [ "$c" = "$1" ] && return 0; done
  return 1
}
cases=("$@")

# ---------------------------------------------------------------- checked-in cases
for f in "$dir"/*.yaml; do
  selected "$(basename "$f" .yaml)" || continue
  expect=$(head -n 1 "$f" | sed -n 's/^# expect: //p')
  check_case "$f" "$expect"
done

# ---------------------------------------------------------------- generated cases
g="$tmp/gen"
mkdir -p "$g"
header='name: n
input: {channels: 3, height: 32, width: 32}
layers:'

# A file of zero bytes (a checked-in case needs its '# expect:' line).
: >"$g/empty-file.yaml"
selected empty-file && check_case "$g/empty-file.yaml" "1:1: error: the spec is empty"

# Over the 1 MiB limit: a valid spec padded with comments.
if selected oversize; then
  { echo "$header"; echo "  - {name: r, op: relu}"; yes '# padding padding padding padding' | head -c 1100000; } >"$g/oversize.yaml"
  check_case "$g/oversize.yaml" "1:1: error: more than the limit of 1048576 (1 MiB)"
fi

# Binary data: every byte value, starting with NUL.
if selected binary; then
  for i in $(seq 0 255); do printf "\\x$(printf %02x "$i")"; done >"$g/binary.yaml"
  check_case "$g/binary.yaml" "1:1: error: the spec is not text: it contains the control character U+0000"
fi

# A gzip'd spec: valid-looking magic bytes, then not text.
if selected gzip; then
  printf '\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03' >"$g/gzip.yaml"
  check_case "$g/gzip.yaml" "1:1: error: the spec is not text: it contains the control character U+001F"
fi

# Latin-1 in the middle of a long file: the location must still be exact.
if selected latin1-late; then
  { echo "$header"; for i in $(seq 1 300); do echo "  - {name: r$i, op: relu}"; done
    printf '  - {name: \xe9t\xe9, op: relu}\n'; } >"$g/latin1-late.yaml"
  check_case "$g/latin1-late.yaml" "304:12: error: the spec is not UTF-8 text: byte 0xE9 is not valid UTF-8 here"
fi

# Each conv is legal, but together their MACs per image overflow a 64-bit count.
if selected macs-overflow; then
  { echo "name: n"; echo "input: {channels: 2047, height: 1024, width: 1024}"; echo "layers:"
    for i in $(seq 0 1099); do echo "  - {name: c$i, op: conv, out: 1, kernel: 1024, pad: 1024, inputs: input}"; done
  } >"$g/macs-overflow.yaml"
  check_case "$g/macs-overflow.yaml" "1027:5: error: the network is too large: at layer 'c1023' its multiply-accumulates per image overflow a 64-bit count"
fi

# More layers than the limit.
if selected too-many-layers; then
  { echo "$header"; for i in $(seq 1 4097); do echo "  - {name: r$i, op: relu}"; done; } >"$g/too-many-layers.yaml"
  check_case "$g/too-many-layers.yaml" "4:3: error: too many layers (4097; the limit is 4096)"
fi

# A concat of more inputs than the limit.
if selected concat-65-inputs; then
  { echo "$header"; echo "  - {name: r, op: relu}"
    printf '  - {name: c, op: concat, inputs: [r'; for i in $(seq 1 64); do printf ', r'; done; echo ']}'
  } >"$g/concat-65-inputs.yaml"
  check_case "$g/concat-65-inputs.yaml" "5:35: error: concat layer 'c' has more than 64 inputs"
fi

# A long chain, then a forward reference back to its end: a cycle 4096 layers long
# (the cycle search must not recurse that deep).
if selected cycle-long; then
  { echo "$header"; echo "  - {name: r0, op: relu, inputs: r4095}"
    for i in $(seq 1 4095); do echo "  - {name: r$i, op: relu}"; done; } >"$g/cycle-long.yaml"
  check_case "$g/cycle-long.yaml" "4:34: error: cycle: layer 'r0' reads 'r4095', which depends on 'r0'"
fi

# Pathological YAML that libyaml takes quadratic time over: deep flow nesting and
# thousands of anchors. Each must fail fast, well inside the timeout.
if selected deep-nesting-1mib; then
  { printf 'name: '; head -c 500000 /dev/zero | tr '\0' '['; head -c 500000 /dev/zero | tr '\0' ']'; echo; } >"$g/deep-nesting-1mib.yaml"
  check_case "$g/deep-nesting-1mib.yaml" "1:38: error: the spec nests lists and mappings more than 32 levels deep"
fi
if selected many-anchors; then
  { echo "name: n"; echo "x:"; for i in $(seq 0 40000); do echo "- &a$i 1"; done
    for i in $(seq 0 40000); do echo "- *a$i"; done; } >"$g/many-anchors.yaml"
  check_case "$g/many-anchors.yaml" "3:3: error: YAML anchors and aliases ('&a0') are not supported"
fi
if selected many-tag-directives; then
  { for i in $(seq 0 40000); do echo "%TAG !t$i! x$i"; done; echo "---"; echo "name: n"; } >"$g/many-tag-directives.yaml"
  check_case "$g/many-tag-directives.yaml" "1:1: error: YAML tags and %TAG directives are not supported"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
