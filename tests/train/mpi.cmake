# Data-parallel training over MPI (tests/train/mpi.sh): mpirun -np 2 against one process
# at twice the batch, resume, a rank killed mid-run, setup errors reported once, ranks as
# the devices of the model-parallel split. Only in a build with MPI.
add_executable(weights_close ${CMAKE_CURRENT_LIST_DIR}/weights_close.c)
target_link_libraries(weights_close PRIVATE alexc_core)
# Under the sanitizers the reference kernels' part is left out (they are the same code
# with or without MPI, and slow there); the rest gets more time.
if(ALEXC_MPI)
  set(_parts same same_ref resume killed errors ranks)
  set(_timeout 120)
  if(ALEXC_SANITIZE)
    set(_parts same resume killed errors ranks)
    set(_timeout 300)
  endif()
  foreach(_part ${_parts})
    add_test(NAME train.mpi.${_part}
             COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/mpi.sh ${ALEXC_BIN} $<TARGET_FILE:weights_close>
                     ${_part}
             WORKING_DIRECTORY ${ALEXC_ROOT})
    # PROCESSORS 2: a job's two ranks take two of ctest's slots, so that under -j2 no other
    # test competes with them (2 MPI tests at once timed out on a loaded 2-core machine).
    set_tests_properties(train.mpi.${_part} PROPERTIES TIMEOUT ${_timeout} PROCESSORS 2
                         ENVIRONMENT "ALEXC_MPIRUN=${MPIEXEC_EXECUTABLE}")
    alexc_label(train.mpi.${_part} train mpi)
  endforeach()
endif()
