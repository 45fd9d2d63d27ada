# The CPU training kernels (compiler/train/grad_cpu.c) against the reference kernels:
# every op case, mini-alexnet walked node by node, determinism over thread counts. Run
# with each micro-kernel the machine has (ALEXC_CPU_TRAIN_ISA; one the CPU lacks falls
# back to the best it has). `test_grad_cpu --bench` times training steps.
add_executable(test_grad_cpu ${CMAKE_CURRENT_LIST_DIR}/test_grad_cpu.c)
target_link_libraries(test_grad_cpu PRIVATE alexc_core)
add_test(NAME train.grad_cpu COMMAND test_grad_cpu WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(train.grad_cpu train)
foreach(_isa avx2 generic)
  add_test(NAME train.grad_cpu.${_isa} COMMAND test_grad_cpu --quick WORKING_DIRECTORY ${ALEXC_ROOT})
  set_property(TEST train.grad_cpu.${_isa} PROPERTY ENVIRONMENT ALEXC_CPU_TRAIN_ISA=${_isa})
  alexc_label(train.grad_cpu.${_isa} train)
endforeach()
