# Pass tests: unit tests of each pass on small graphs, and the equivalence of every
# pass and combination of passes with the plain reference over every spec.
file(GLOB ALEXC_PASS_GRAPHS ${CMAKE_CURRENT_SOURCE_DIR}/passes/graphs/*.yaml)
file(GLOB ALEXC_SPECS ${PROJECT_SOURCE_DIR}/specs/*.yaml)

add_executable(test_equivalence passes/test_equivalence.c)
target_link_libraries(test_equivalence PRIVATE alexc_core)
foreach(spec ${ALEXC_SPECS} ${ALEXC_PASS_GRAPHS})
  get_filename_component(name ${spec} NAME_WE)
  add_test(NAME passes.equivalence.${name} COMMAND test_equivalence ${spec}
           WORKING_DIRECTORY ${ALEXC_ROOT})
  alexc_label(passes.equivalence.${name} passes)
endforeach()

add_executable(test_passes passes/test_passes.c)
target_link_libraries(test_passes PRIVATE alexc_core)
add_test(NAME passes.unit COMMAND test_passes WORKING_DIRECTORY ${ALEXC_ROOT})
alexc_label(passes.unit passes unit)

alexc_shell_test(passes.cli passes/cli.sh passes cli)
