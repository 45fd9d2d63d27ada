# alexc train / eval end to end on a Fashion-MNIST subset (tests/train/cli.sh): an
# accuracy floor, bit-identical resume after SIGKILL, error messages, a photo folder, and
# two-device training.
foreach(_part learn resume errors photos devices)
  add_test(NAME train.cli.${_part} COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cli.sh ${ALEXC_BIN} ${_part}
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(train.cli.${_part} train)
endforeach()
