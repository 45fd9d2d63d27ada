# The CPU target (label 'cpu'): every spec through the equivalence matrix of
# tests/cpu/test_cpu.c (fused/unfused, 1-8 devices, AVX-512/AVX2/SSE2 code, every layer
# against the reference), and every PyTorch golden case through `golden check
# --target cpu`, natively and as AVX2 code on two devices. The sanitizer build runs the
# quick matrix (the JIT-compiled code is not instrumented; the compiler and runtime are).
if(NOT ALEXC_LLVM)
  return()
endif()
add_executable(test_cpu cpu/test_cpu.c)
target_link_libraries(test_cpu PRIVATE alexc_core)

if(ALEXC_SANITIZE)
  set(_cpu_mode --quick)
else()
  set(_cpu_mode "")
endif()
# cpu.equivalence.GROUP.NAME for specs/, tests/passes/graphs, tests/specs/good and the
# golden cases' specs (the sanitizer build: specs/ and graphs, which hold every op,
# fused pattern and partition shape; the golden specs run there through golden.cpu).
if(ALEXC_SANITIZE)
  set(_cpu_groups specs graphs)
else()
  set(_cpu_groups specs graphs good golden)
endif()
foreach(_group ${_cpu_groups})
  if(_group STREQUAL "specs")
    file(GLOB _specs ${PROJECT_SOURCE_DIR}/specs/*.yaml)
  elseif(_group STREQUAL "graphs")
    file(GLOB _specs ${CMAKE_CURRENT_LIST_DIR}/../passes/graphs/*.yaml)
  elseif(_group STREQUAL "good")
    file(GLOB _specs ${CMAKE_CURRENT_LIST_DIR}/../specs/good/*.yaml)
  else()
    file(GLOB _specs ${CMAKE_CURRENT_LIST_DIR}/../golden/*/spec.yaml)
  endif()
  foreach(_spec ${_specs})
    get_filename_component(_name ${_spec} NAME_WE)
    if(_group STREQUAL "golden")
      get_filename_component(_dir ${_spec} DIRECTORY)
      get_filename_component(_name ${_dir} NAME)
    endif()
    add_test(NAME cpu.equivalence.${_group}.${_name} COMMAND test_cpu ${_cpu_mode} ${_spec}
             WORKING_DIRECTORY ${ALEXC_ROOT})
    alexc_label(cpu.equivalence.${_group}.${_name} cpu)
    set_property(TEST cpu.equivalence.${_group}.${_name} PROPERTY ENVIRONMENT
                 ALEXC_CACHE=${CMAKE_BINARY_DIR}/cache)
  endforeach()
endforeach()

file(GLOB _golden_manifests ${CMAKE_CURRENT_LIST_DIR}/../golden/*/golden.yaml)
foreach(_manifest ${_golden_manifests})
  get_filename_component(_dir ${_manifest} DIRECTORY)
  get_filename_component(_case ${_dir} NAME)
  file(RELATIVE_PATH _rel ${ALEXC_ROOT} ${_dir})
  add_test(NAME golden.cpu.${_case} COMMAND ${ALEXC_BIN} golden check ${_rel} --target cpu
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(golden.cpu.${_case} cpu golden)
  if(NOT ALEXC_SANITIZE)  # the sanitizer build checks AVX2 code in test_cpu --quick
    add_test(NAME golden.cpu_avx2.${_case}
             COMMAND ${ALEXC_BIN} golden check ${_rel} --target cpu --cpu x86-64-v3 --devices 2
             WORKING_DIRECTORY ${ALEXC_ROOT})
    alexc_label(golden.cpu_avx2.${_case} cpu golden)
  endif()
endforeach()

# alexc build / compile --target cpu as a user runs them (tests/cpu/build.sh).
alexc_shell_test(cpu.build cpu/build.sh cpu cli)

# The program's text form: round trip, and what a damaged model could hold refused.
add_executable(test_cpu_program ${CMAKE_CURRENT_LIST_DIR}/../unit/test_cpu_program.c)
target_link_libraries(test_cpu_program PRIVATE alexc_core)
target_include_directories(test_cpu_program SYSTEM PRIVATE ${ALEXC_LLVM_includedir})
add_test(NAME unit.test_cpu_program COMMAND test_cpu_program WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(unit.test_cpu_program unit cpu)
