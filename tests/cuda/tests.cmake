# CUDA backend tests.
#   cuda.emulate.SPEC     generated kernels compiled by g++ for the CPU and run through the
#                         runtime's plan interpreter, against the reference (no GPU needed)
#   cuda.generated        generated/ is what the compiler emits now
#   cuda.nvrtc            every file in generated/ compiles with NVRTC for sm_90
#   cuda.gpu              alexc run --target cuda against --target ref (skips without a GPU)
#   cuda.no_gpu           without a driver, --target cuda says so and fails cleanly
file(GLOB ALEXC_CUDA_SPECS ${PROJECT_SOURCE_DIR}/specs/*.yaml ${CMAKE_CURRENT_SOURCE_DIR}/passes/graphs/*.yaml)

find_program(ALEXC_CXX NAMES g++ c++ clang++)
if(ALEXC_CXX)
  add_executable(test_emulate cuda/test_emulate.c)
  target_link_libraries(test_emulate PRIVATE alexc_core ${CMAKE_DL_LIBS})
  if(ALEXC_SANITIZE)
    target_compile_definitions(test_emulate PRIVATE ALEXC_SANITIZE_KERNELS)
  endif()
  foreach(spec ${ALEXC_CUDA_SPECS})
    get_filename_component(name ${spec} NAME_WE)
    add_test(NAME cuda.emulate.${name}
             COMMAND test_emulate ${ALEXC_CXX} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/cuda_emu.h
                     ${CMAKE_CURRENT_BINARY_DIR}/cuda-emulate ${spec}
             WORKING_DIRECTORY ${ALEXC_ROOT})
    if(ALEXC_SANITIZE AND name MATCHES "^alexnet")
      # About a minute each with ASan-instrumented kernels: the sanitizer job
      # (ctest -L sanitize) leaves the full-size AlexNets to the plain build.
      set_property(TEST cuda.emulate.${name} APPEND PROPERTY LABELS cuda slow)
    else()
      alexc_label(cuda.emulate.${name} cuda)
    endif()
  endforeach()
else()
  message(STATUS "alexc: no C++ compiler found: the CUDA emulation tests are left out")
endif()

add_test(NAME cuda.generated
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/generated.sh ${ALEXC_BIN}
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(cuda.generated cuda)

add_executable(test_nvrtc cuda/test_nvrtc.c)
target_link_libraries(test_nvrtc PRIVATE alexc_core)
add_test(NAME cuda.nvrtc COMMAND test_nvrtc generated WORKING_DIRECTORY ${ALEXC_ROOT})
set_tests_properties(cuda.nvrtc PROPERTIES SKIP_RETURN_CODE 77)
alexc_label(cuda.nvrtc cuda)

add_test(NAME cuda.gpu COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/gpu.sh ${ALEXC_BIN}
         WORKING_DIRECTORY ${ALEXC_ROOT})
set_tests_properties(cuda.gpu PROPERTIES SKIP_RETURN_CODE 77)
alexc_label(cuda.gpu gpu)

add_test(NAME cuda.cli COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/cli.sh ${ALEXC_BIN}
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(cuda.cli cuda cli)
