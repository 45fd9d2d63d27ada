# Philox4x32-10 and the dropout masks (compiler/train/philox.c).
add_executable(test_philox ${CMAKE_CURRENT_LIST_DIR}/test_philox.c)
target_link_libraries(test_philox PRIVATE alexc_core)
add_test(NAME train.philox COMMAND test_philox WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(train.philox train)
