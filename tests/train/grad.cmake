# train.grad: the reference training kernels (compiler/train/grad_ref.c) against finite
# differences on every op case of tests/train/op_cases.h, plus the loss, dropout masks
# and max-pool ties (tests/train/test_grad.c). A few seconds; well under a minute with
# the sanitizers.
add_executable(test_grad ${CMAKE_CURRENT_LIST_DIR}/test_grad.c)
target_link_libraries(test_grad PRIVATE alexc_core)
add_test(NAME train.grad COMMAND test_grad WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(train.grad train)
