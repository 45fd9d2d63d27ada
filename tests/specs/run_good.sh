#!/usr/bin/env bash
# Valid specs stay valid and keep their IR:
#  - each tests/specs/good/NAME.yaml passes `alexc check` (exit 0, nothing on stderr:
#    no warnings either) and `alexc dump` prints exactly tests/specs/good/NAME.dump;
#  - `alexc dump` of each specs/NAME.yaml prints exactly tests/specs/dumps/NAME.dump,
#    so the IR's text form stays stable.
#
# Usage: tests/specs/run_good.sh ALEXC            check (from the repository root)
#        tests/specs/run_good.sh ALEXC --update   rewrite the .dump files from ALEXC;
#                                                 review the diff before committing
set -uo pipefail
alexc="$1"
update=false
[ "${2:-}" = "--update" ] && update=true
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

fail() {
  echo "FAIL $1: $2"
  failed=$((failed + 1))
}

# dump_case SPEC EXPECTED_DUMP
dump_case() {
  local spec="$1" want="$2" name
  name="$spec"
  timeout 10 "$alexc" dump "$spec" >"$tmp/dump" 2>"$tmp/err"
  local rc=$?
  if [ $rc -ne 0 ]; then
    fail "$name" "alexc dump exited $rc: $(head -n 3 "$tmp/err")"
    return
  fi
  if $update; then
    cp "$tmp/dump" "$want"
    echo "wrote $want"
  elif [ ! -f "$want" ]; then
    fail "$name" "no expected dump $want (run: bash tests/specs/run_good.sh ALEXC --update)"
    return
  elif ! diff -u "$want" "$tmp/dump" >"$tmp/diff"; then
    fail "$name" "dump differs from $want:"
    head -n 20 "$tmp/diff" | sed 's/^/  /'
    return
  fi
  passed=$((passed + 1))
}

for spec in tests/specs/good/*.yaml; do
  timeout 10 "$alexc" check "$spec" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "$spec" "alexc check exited $rc: $(head -n 3 "$tmp/err")"
    continue
  fi
  if [ -s "$tmp/err" ]; then
    fail "$spec" "alexc check wrote to stderr: $(head -n 3 "$tmp/err")"
    continue
  fi
  dump_case "$spec" "${spec%.yaml}.dump"
done

for spec in specs/*.yaml; do
  dump_case "$spec" "tests/specs/dumps/$(basename "$spec" .yaml).dump"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
