# CUDA backend tests.
#   cuda.emulate.SPEC     generated kernels compiled by g++ for the CPU and run through the
#                         runtime's plan interpreter, against the reference (no GPU needed)
#   cuda.generated        generated/ is what the compiler emits now
#   cuda.nvrtc            every file in generated/ compiles with NVRTC for sm_90
#   cuda.nvrtc_matrix     every case cuda.gpu runs, compiled with NVRTC for sm_90 (label long)
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
    if(ALEXC_SANITIZE AND name MATCHES "^alexnet|^many_groups|-wide$")
      # About a minute each with ASan-instrumented kernels: the sanitizer job
      # (ctest -L sanitize) leaves the full-size AlexNets, many_groups (37 groups:
      # as many kernels' worth of code) and mini-alexnet-wide (mini-alexnet's ops and
      # shapes at twice the channels, minutes under ASan) to the plain build.
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

# Every spec, precision and --conv, fused and unfused, on one and two devices: what
# cuda.gpu runs, compiled instead (a few minutes of NVRTC: not in the sanitizer job).
add_test(NAME cuda.nvrtc_matrix
         COMMAND ${CMAKE_COMMAND} -E env ALEXC_GPU_TEST_JOBS=2
                 bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/gpu.sh ${ALEXC_BIN} --compile-only
         WORKING_DIRECTORY ${ALEXC_ROOT})
# Six minutes: `scripts/test.sh --long`. CI's NVRTC check is cuda.nvrtc, every variant in
# generated/ (AlexNet's largest shapes, every conv strategy, bf16, tf32, two devices).
set_tests_properties(cuda.nvrtc_matrix PROPERTIES SKIP_RETURN_CODE 77 LABELS "cuda;slow;long")

add_test(NAME cuda.gpu COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/gpu.sh ${ALEXC_BIN}
         WORKING_DIRECTORY ${ALEXC_ROOT})
set_tests_properties(cuda.gpu PROPERTIES SKIP_RETURN_CODE 77)
alexc_label(cuda.gpu gpu)

add_test(NAME cuda.cli COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/cli.sh ${ALEXC_BIN}
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(cuda.cli cuda cli)

# ---------------------------------------------------------------- cuda.fake
# The real runtime (runtime/cuda.c) run on the CPU: a fake libcuda.so.1 and
# libcublas.so.13 (tests/cuda/fake/) that alexc dlopens through LD_LIBRARY_PATH, with
# bounds-checked memory, the generated kernels compiled for the CPU from the NVRTC
# cache's sources, and streams executed lazily in a seeded random order.
#   cuda.fake             alexc run --target cuda --compare-ref on the fake, small specs
if(ALEXC_CUDA AND ALEXC_CXX)
  set(ALEXC_FAKE_CUDA_DIR ${CMAKE_CURRENT_BINARY_DIR}/fake-cuda)
  add_library(fake_cuda SHARED cuda/fake/fake_cuda.c)
  target_include_directories(fake_cuda PRIVATE ${ALEXC_CUDA_INCLUDE})
  target_link_libraries(fake_cuda PRIVATE ${CMAKE_DL_LIBS})
  # Exactly the names runtime/cuda.c dlopens; the soname is the file name, so the fake
  # cuBLAS's dependency on libcuda.so.1 resolves to this library, found beside it.
  set_target_properties(fake_cuda PROPERTIES PREFIX "" OUTPUT_NAME libcuda SUFFIX .so.1
                        LIBRARY_OUTPUT_DIRECTORY ${ALEXC_FAKE_CUDA_DIR})
  add_library(fake_cublas SHARED cuda/fake/fake_cublas.c)
  target_include_directories(fake_cublas PRIVATE ${ALEXC_CUDA_INCLUDE})
  target_link_libraries(fake_cublas PRIVATE fake_cuda)
  set_target_properties(fake_cublas PROPERTIES PREFIX "" OUTPUT_NAME libcublas SUFFIX .so.13
                        LIBRARY_OUTPUT_DIRECTORY ${ALEXC_FAKE_CUDA_DIR}
                        BUILD_RPATH "$ORIGIN")
  add_library(fake_cublaslt SHARED cuda/fake/fake_cublaslt.c)
  target_include_directories(fake_cublaslt PRIVATE ${ALEXC_CUDA_INCLUDE})
  target_link_libraries(fake_cublaslt PRIVATE fake_cuda)
  set_target_properties(fake_cublaslt PROPERTIES PREFIX "" OUTPUT_NAME libcublasLt SUFFIX .so.13
                        LIBRARY_OUTPUT_DIRECTORY ${ALEXC_FAKE_CUDA_DIR}
                        BUILD_RPATH "$ORIGIN")
  # A fake NCCL (libnccl.so.2) whose sums are MPI's, for mpirun -np N alexc train --target
  # cuda (train.mpi.cuda, in train.cmake): only in a build with MPI.
  if(ALEXC_MPI)
    add_library(fake_nccl SHARED cuda/fake/fake_nccl.c)
    target_include_directories(fake_nccl PRIVATE ${ALEXC_CUDA_INCLUDE})
    target_link_libraries(fake_nccl PRIVATE fake_cuda MPI::MPI_C)
    set_target_properties(fake_nccl PROPERTIES PREFIX "" OUTPUT_NAME libnccl SUFFIX .so.2
                          LIBRARY_OUTPUT_DIRECTORY ${ALEXC_FAKE_CUDA_DIR}
                          BUILD_RPATH "$ORIGIN")
  endif()
  add_test(NAME cuda.fake
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/fake.sh ${ALEXC_BIN}
                   ${ALEXC_FAKE_CUDA_DIR} ${ALEXC_CXX}
                   ${CMAKE_CURRENT_SOURCE_DIR}/cuda/cuda_emu.h
           WORKING_DIRECTORY ${ALEXC_ROOT})
  set_tests_properties(cuda.fake PROPERTIES SKIP_RETURN_CODE 77)
  alexc_label(cuda.fake cuda)
endif()

# scripts/gpu-check.sh's phases (environment, logits against the reference, the
# sanitizers, the batch cross-check, timings, Nsight Compute) rehearsed against the fake
# driver on the small spec, so the script the GPU machine runs has run before its
# minutes are spent; compute-sanitizer, ncu and nvidia-smi are absent here, and their
# phases must say "skipped: not found". A few minutes: not in the sanitizer job.
add_test(NAME cuda.rehearse COMMAND ${CMAKE_COMMAND} -E env ALEXC=${ALEXC_BIN}
                                    OUT=${CMAKE_CURRENT_BINARY_DIR}/rehearse-out
                                    bash ${PROJECT_SOURCE_DIR}/scripts/gpu-check.sh rehearse
         WORKING_DIRECTORY ${ALEXC_ROOT})
set_tests_properties(cuda.rehearse PROPERTIES SKIP_RETURN_CODE 77 LABELS "cuda;slow")

