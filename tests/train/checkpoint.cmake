# Checkpoints and reports (train/checkpoint.c, train/report.c): round trips, corrupt and
# foreign files refused, kill -9 during saves, the metrics CSV and its PNG.
add_executable(test_checkpoint ${CMAKE_CURRENT_SOURCE_DIR}/train/test_checkpoint.c)
target_link_libraries(test_checkpoint PRIVATE alexc_core)
add_test(NAME train.checkpoint COMMAND test_checkpoint WORKING_DIRECTORY ${ALEXC_ROOT})
set_tests_properties(train.checkpoint PROPERTIES TIMEOUT 120)
alexc_label(train.checkpoint train)
