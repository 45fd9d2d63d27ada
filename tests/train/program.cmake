# The training program (tests/train/test_program.c): the verifier refuses broken
# programs, backward fusion folds the conv-relu, fc-relu, conv-relu-lrn, conv-relu-pool
# and conv-relu-lrn-pool backward chains, and the fused program computes the plain
# program's bits with both kernel tables, on every spec and every graph of
# tests/passes/graphs; again with each other micro-kernel (ALEXC_CPU_TRAIN_ISA), whose
# GEMMs the CPU's fused chains feed as the plain conv backward does.
add_executable(test_program ${CMAKE_CURRENT_LIST_DIR}/test_program.c)
target_link_libraries(test_program PRIVATE alexc_core)
file(GLOB _program_graphs ${CMAKE_CURRENT_LIST_DIR}/../passes/graphs/*.yaml)
add_test(NAME train.program
         COMMAND test_program ${_program_graphs} ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(train.program train)
foreach(_isa avx2 generic)
  add_test(NAME train.program.${_isa}
           COMMAND test_program ${_program_graphs} ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml
           WORKING_DIRECTORY ${ALEXC_ROOT})
  set_property(TEST train.program.${_isa} PROPERTY ENVIRONMENT ALEXC_CPU_TRAIN_ISA=${_isa})
  alexc_label(train.program.${_isa} train)
endforeach()
