# Training on 2 to 8 logical devices against one device (tests/train/test_devices.c), on
# every graph of tests/passes/graphs (branches, groups, LRN halos) and mini-alexnet, with
# each kernel table.
add_executable(test_devices ${CMAKE_CURRENT_LIST_DIR}/test_devices.c)
target_link_libraries(test_devices PRIVATE alexc_core)
file(GLOB _device_graphs ${CMAKE_CURRENT_LIST_DIR}/../passes/graphs/*.yaml)
foreach(_kernels ref cpu)
  add_test(NAME train.devices.${_kernels}
           COMMAND test_devices ${_kernels} ${_device_graphs} ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(train.devices.${_kernels} train)
endforeach()
