# alexc train / eval end to end on a Fashion-MNIST subset (tests/train/cli.sh): an
# accuracy floor, bit-identical resume after SIGKILL, error messages, a photo folder, and
# two-device training.
foreach(_part learn resume errors photos devices)
  add_test(NAME train.cli.${_part} COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/cli.sh ${ALEXC_BIN} ${_part}
           WORKING_DIRECTORY ${ALEXC_ROOT})
  if(_part STREQUAL "learn")
    # 188 steps to an accuracy floor: three minutes under the sanitizers, and the same
    # code as `resume`'s, which they do check. The plain build only.
    set_property(TEST train.cli.learn APPEND PROPERTY LABELS train slow)
  else()
    alexc_label(train.cli.${_part} train)
  endif()
endforeach()
