# Spec frontend suites (label 'specs'); see tests/specs/run_bad.sh and run_good.sh.
#   specs.bad   every spec in tests/specs/bad/ (and the generated ones) gets exactly one
#               FILE:LINE:COL: error: message at the expected place, exit status 1
#   specs.good  tests/specs/good/*.yaml check cleanly and dump to their .dump files, and
#               specs/*.yaml dump to tests/specs/dumps/*.dump
# Regenerate the expected dumps after an intended IR change:
#   bash tests/specs/run_good.sh build/alexc --update
alexc_shell_test(specs.bad specs/run_bad.sh specs)
alexc_shell_test(specs.good specs/run_good.sh specs)
