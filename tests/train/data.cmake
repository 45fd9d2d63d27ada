# The training data pipelines (compiler/train/data.c): IDX files and photo folders,
# written as fixtures at test time; Debian's Fashion-MNIST when it is installed.
add_executable(test_data train/test_data.c)
target_link_libraries(test_data PRIVATE alexc_core)
add_test(NAME train.data COMMAND test_data WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(train.data train)
