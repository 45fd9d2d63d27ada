# The training program (tests/train/test_program.c): the verifier refuses broken
# programs, backward fusion folds the conv-relu and fc-relu backwards, and the fused
# program computes the plain program's bits with both kernel tables, on every spec and
# every graph of tests/passes/graphs.
add_executable(test_program ${CMAKE_CURRENT_LIST_DIR}/test_program.c)
target_link_libraries(test_program PRIVATE alexc_core)
file(GLOB _program_graphs ${CMAKE_CURRENT_LIST_DIR}/../passes/graphs/*.yaml)
add_test(NAME train.program
         COMMAND test_program ${_program_graphs} ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(train.program train)
