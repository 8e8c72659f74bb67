# lifl_add_test(<name> SOURCES ... LIBS ... [TIMEOUT s]): one GoogleTest binary whose cases are
# discovered into ctest, each bounded by TIMEOUT.
function(lifl_add_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 60)
  endif()
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest_main GTest::gmock)
  lifl_target_options(${name})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 30 PROPERTIES TIMEOUT ${T_TIMEOUT}
                       ENVIRONMENT "LIFL_BIN=${CMAKE_BINARY_DIR}/bin/lifl")
endfunction()
include(GoogleTest)
