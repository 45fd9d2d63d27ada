# Golden tests computed by PyTorch (tests/golden/README.md). Included from
# tests/CMakeLists.txt, which defines alexc_label, ALEXC_BIN and ALEXC_ROOT.

# One test per case directory, found by its manifest, so adding a case needs no edit
# here. CONFIGURE_DEPENDS makes the build re-run the glob, so `make` picks up a new case.
file(GLOB _golden_manifests LIST_DIRECTORIES false CONFIGURE_DEPENDS
     ${CMAKE_CURRENT_LIST_DIR}/*/golden.yaml)
foreach(_manifest IN LISTS _golden_manifests)
  get_filename_component(_case_dir ${_manifest} DIRECTORY)
  get_filename_component(_case ${_case_dir} NAME)
  file(RELATIVE_PATH _case_rel ${ALEXC_ROOT} ${_case_dir})  # tests/golden/CASE
  add_test(NAME golden.${_case} COMMAND ${ALEXC_BIN} golden check ${_case_rel}
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(golden.${_case} golden)
endforeach()

# The check must be able to fail (a perturbed golden output must be caught).
add_test(NAME golden.check_fails
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/check_fails.sh ${ALEXC_BIN}
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(golden.check_fails golden)

# `make regen-goldens`: recompute the goldens with PyTorch. Not part of `all`: CI has no
# PyTorch, and the checked-in outputs must only change on purpose.
set(ALEXC_TORCH_PYTHON /usr/bin/python3 CACHE FILEPATH
    "A Python with PyTorch and numpy, for 'make regen-goldens'")
add_custom_target(regen-goldens
  COMMAND ${ALEXC_TORCH_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/make_goldens.py --alexc ${ALEXC_BIN}
  WORKING_DIRECTORY ${ALEXC_ROOT}
  COMMENT "Regenerating tests/golden with PyTorch (${ALEXC_TORCH_PYTHON})"
  USES_TERMINAL VERBATIM)
add_dependencies(regen-goldens alexc)
