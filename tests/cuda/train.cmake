# CUDA training (compiler/backends/cuda/train.c), checked without a GPU.
#   cuda.train_emulate.SPEC   the generated training step compiled by g++ for the CPU and run
#                             through the plan interpreter: two SGD steps against the
#                             reference's gradients and update
#   cuda.train_emulate_2dev.SPEC  the same with the two-device split, against one device
#   cuda.train_emulate_3dev.SPEC  three devices, two specs
#   cuda.train_mutants        broken variants of mini-alexnet's generated step must fail
#   cuda.train_split_mutants  a send or a reduction left out of the split must fail
#   cuda.train_nvrtc.SPEC     the generated step compiles with NVRTC for sm_90
#   cuda.train_nvrtc_2dev.SPEC  and each device's of the two-device split
#   cuda.train_cli            alexc compile --train: the source, and its refusals
#   cuda.train_fake           two SGD steps through runtime/cuda.c on the fake driver, and
#                             alexc train --target cuda for an epoch
#   cuda.train_gpu.*          the same two steps on a real GPU (label gpu; skipped without)
file(GLOB ALEXC_CUDA_TRAIN_SPECS ${PROJECT_SOURCE_DIR}/specs/*.yaml
     ${CMAKE_CURRENT_SOURCE_DIR}/passes/graphs/*.yaml)
if(ALEXC_CXX)
  add_executable(test_train_emulate cuda/test_train_emulate.c)
  target_link_libraries(test_train_emulate PRIVATE alexc_core ${CMAKE_DL_LIBS})
  if(ALEXC_SANITIZE)
    target_compile_definitions(test_train_emulate PRIVATE ALEXC_SANITIZE_KERNELS)
  endif()
  set(_train_args ${ALEXC_CXX} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/cuda_emu.h
                  ${CMAKE_CURRENT_BINARY_DIR}/cuda-train-emulate)
  foreach(spec ${ALEXC_CUDA_TRAIN_SPECS})
    get_filename_component(name ${spec} NAME_WE)
    add_test(NAME cuda.train_emulate.${name} COMMAND test_train_emulate ${_train_args} ${spec}
             WORKING_DIRECTORY ${ALEXC_ROOT})
    add_test(NAME cuda.train_emulate_2dev.${name}
             COMMAND test_train_emulate ${_train_args} ${spec} --devices 2
             WORKING_DIRECTORY ${ALEXC_ROOT})
    foreach(test cuda.train_emulate.${name} cuda.train_emulate_2dev.${name})
      if(name STREQUAL "alexnet-torchvision")
        # Minutes each, and alexnet's own step covers its ops at the same size: left to
        # `scripts/test.sh --long`.
        set_property(TEST ${test} APPEND PROPERTY LABELS cuda slow long)
      elseif(name MATCHES "^alexnet")  # minutes each
        set_property(TEST ${test} APPEND PROPERTY LABELS cuda slow)
      else()
        alexc_label(${test} cuda)
      endif()
    endforeach()
  endforeach()
  foreach(spec ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml ${PROJECT_SOURCE_DIR}/specs/alexnet.yaml
               ${CMAKE_CURRENT_SOURCE_DIR}/passes/graphs/branch_concat.yaml)
    get_filename_component(name ${spec} NAME_WE)
    add_test(NAME cuda.train_nvrtc.${name} COMMAND test_train_emulate ${_train_args} ${spec} --nvrtc
             WORKING_DIRECTORY ${ALEXC_ROOT})
    add_test(NAME cuda.train_nvrtc_2dev.${name}
             COMMAND test_train_emulate ${_train_args} ${spec} --nvrtc --devices 2
             WORKING_DIRECTORY ${ALEXC_ROOT})
    set_tests_properties(cuda.train_nvrtc.${name} cuda.train_nvrtc_2dev.${name} PROPERTIES
                         SKIP_RETURN_CODE 77)
    alexc_label(cuda.train_nvrtc.${name} cuda)
    alexc_label(cuda.train_nvrtc_2dev.${name} cuda)
  endforeach()
  # Three devices: the partition's uneven splits (and a tower per device where it pays).
  foreach(spec ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml
               ${CMAKE_CURRENT_SOURCE_DIR}/passes/graphs/two_towers.yaml)
    get_filename_component(name ${spec} NAME_WE)
    add_test(NAME cuda.train_emulate_3dev.${name}
             COMMAND test_train_emulate ${_train_args} ${spec} --devices 3
             WORKING_DIRECTORY ${ALEXC_ROOT})
    if(ALEXC_SANITIZE AND name STREQUAL "two_towers")  # 3 minutes under ASan
      set_property(TEST cuda.train_emulate_3dev.${name} APPEND PROPERTY LABELS cuda slow)
    else()
      alexc_label(cuda.train_emulate_3dev.${name} cuda)
    endif()
  endforeach()
  add_test(NAME cuda.train_mutants
           COMMAND test_train_emulate ${_train_args} ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml
                   --mutants
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(cuda.train_mutants cuda)
  add_test(NAME cuda.train_split_mutants
           COMMAND test_train_emulate ${_train_args} ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml
                   --devices 2 --split-mutants
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(cuda.train_split_mutants cuda)
endif()

add_test(NAME cuda.train_cli COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/train_cli.sh ${ALEXC_BIN}
         WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(cuda.train_cli cuda cli)

# Training through runtime/cuda.c on the fake driver (tests.cmake builds it).
if(ALEXC_CUDA AND ALEXC_CXX)
  add_executable(test_train_fake cuda/test_train_fake.c)
  target_link_libraries(test_train_fake PRIVATE alexc_core)
  add_test(NAME cuda.train_fake
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cuda/train_fake.sh $<TARGET_FILE:test_train_fake>
                   ${ALEXC_FAKE_CUDA_DIR} ${ALEXC_CXX} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/cuda_emu.h
                   ${ALEXC_BIN}
           WORKING_DIRECTORY ${ALEXC_ROOT})
  set_tests_properties(cuda.train_fake PROPERTIES SKIP_RETURN_CODE 77)
  # On the device machine: the same steps on the real driver and cuBLAS (skipped without a
  # GPU): one device, and the two-device split (two GPUs, or two streams of one).
  foreach(devices 1 2)
    add_test(NAME cuda.train_gpu.${devices}dev
             COMMAND test_train_fake ${PROJECT_SOURCE_DIR}/specs/mini-alexnet.yaml ${devices}
             WORKING_DIRECTORY ${ALEXC_ROOT})
    set_tests_properties(cuda.train_gpu.${devices}dev PROPERTIES SKIP_RETURN_CODE 77)
    alexc_label(cuda.train_gpu.${devices}dev gpu)
  endforeach()
  if(ALEXC_SANITIZE)  # about 6 minutes with ASan-instrumented fakes: the plain build's
    set_property(TEST cuda.train_fake APPEND PROPERTY LABELS cuda slow)
  else()
    alexc_label(cuda.train_fake cuda)
  endif()
endif()

# Data parallelism on the fake driver: mpirun -np 2 alexc train --target cuda at batch B
# against one process at 2B (tests/train/mpi.sh, part cuda), the gradients summed by the
# fake NCCL (MPI inside); and too few GPUs for the ranks refused. Minutes with
# ASan-instrumented fakes: the plain build's only.
if(ALEXC_CUDA AND ALEXC_CXX AND ALEXC_MPI)
  add_test(NAME train.mpi.cuda
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/train/mpi.sh ${ALEXC_BIN}
                   $<TARGET_FILE:weights_close> cuda
           WORKING_DIRECTORY ${ALEXC_ROOT})
  set_tests_properties(train.mpi.cuda PROPERTIES TIMEOUT 300 PROCESSORS 2
                       ENVIRONMENT "ALEXC_MPIRUN=${MPIEXEC_EXECUTABLE};ALEXC_FAKE_LIB=${ALEXC_FAKE_CUDA_DIR};ALEXC_FAKE_CUDA_CXX=${ALEXC_CXX};ALEXC_FAKE_CUDA_EMU=${CMAKE_CURRENT_SOURCE_DIR}/cuda/cuda_emu.h")
  if(ALEXC_SANITIZE)
    set_property(TEST train.mpi.cuda APPEND PROPERTY LABELS train mpi cuda slow)
  else()
    alexc_label(train.mpi.cuda train mpi cuda)
  endif()
endif()
