# The model bundle and alexrt (tests/cuda/bundle.sh):
#   cuda.bundle   alexc compile -o MODEL.so: its symbols and sections, its payload is the
#                 plan file byte for byte (test_bundle), alexrt info/run and their errors
#                 (the compiled-model half skips without NVRTC); on the fake CUDA driver,
#                 alexrt run against the reference executor
add_executable(test_bundle cuda/test_bundle.c)
target_link_libraries(test_bundle PRIVATE alexrt)
# With the fake CUDA driver (tests/cuda/tests.cmake), alexrt run runs on the CPU too.
set(ALEXC_BUNDLE_FAKE_ARGS)
if(TARGET fake_cuda)
  set(ALEXC_BUNDLE_FAKE_ARGS ${ALEXC_FAKE_CUDA_DIR} ${ALEXC_CXX}
                             ${CMAKE_CURRENT_SOURCE_DIR}/cuda/cuda_emu.h)
endif()
add_test(NAME cuda.bundle
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/bundle.sh ${ALEXC_BIN}
                 $<TARGET_FILE:alexrt_cli> $<TARGET_FILE:test_bundle> ${ALEXC_BUNDLE_FAKE_ARGS}
         WORKING_DIRECTORY ${ALEXC_ROOT})
set_tests_properties(cuda.bundle PROPERTIES SKIP_RETURN_CODE 77)
alexc_label(cuda.bundle cuda cli)
