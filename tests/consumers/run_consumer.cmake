# Builds and runs a consumer project against the library, the way users would:
#   MODE=find_package      install into a temporary prefix, then find_package(subprocess),
#                          and check that missing components fail the find with a reason
#   MODE=add_subdirectory  add the source tree with add_subdirectory()
#   MODE=pkg_config        install, then a plain compiler command with pkg-config's flags
#   MODE=plain             a plain compiler command with -I include, nothing else
# WANT_IPC: the ipc part was built (nlohmann/json found), so the consumers use it too.
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
  message("${out}")
endfunction()
# A command that must fail, with `expected` in what it prints.
function(run_failing expected)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(rc EQUAL 0)
    message(FATAL_ERROR "expected a failure, but it succeeded: ${ARGN}\n${out}")
  endif()
  string(REGEX REPLACE "[ \t\r\n]+" " " flat "${out}")  # CMake wraps its messages
  string(FIND "${flat}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "expected '${expected}' in the output of ${ARGN}:\n${out}")
  endif()
  message("failed as expected, saying: ${expected}")
endfunction()

file(STRINGS ${SOURCE_DIR}/include/subprocess/version.hpp version_line
     REGEX "^#define SUBPROCESS_VERSION_STRING ")
string(REGEX REPLACE ".*\"([0-9.]+)\".*" "\\1" version "${version_line}")
set(consumer ${SOURCE_DIR}/tests/consumers/${MODE})
set(std -std=c++20)
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)
  run_failing("component nosuch: unknown"
      ${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/fail1 -DCMAKE_CXX_COMPILER=${CXX}
      -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DEXPECT_FAILURE_WITH=nosuch)
  if(WANT_IPC)
    run_failing("component ipc: its dependency nlohmann_json was not found"
        ${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/fail2 -DCMAKE_CXX_COMPILER=${CXX}
        -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DEXPECT_FAILURE_WITH=ipc
        -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=TRUE)
  endif()
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build -DCMAKE_CXX_COMPILER=${CXX}
      -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DWANT_IPC=${WANT_IPC})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
elseif(MODE STREQUAL "add_subdirectory")
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK_DIR}/build -DCMAKE_CXX_COMPILER=${CXX}
      -DSUBPROCESS_SOURCE_DIR=${SOURCE_DIR} -DWANT_IPC=${WANT_IPC})
  run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
elseif(MODE STREQUAL "pkg_config")
  find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
  run(${CMAKE_COMMAND} --install ${BINARY_DIR} --prefix ${WORK_DIR}/prefix)
  set(ENV{PKG_CONFIG_PATH} ${WORK_DIR}/prefix/lib/pkgconfig)
  run(${PKG_CONFIG} --exact-version=${version} subprocess)
  set(parts subprocess)
  if(WANT_IPC)
    set(parts subprocess-ipc)
  endif()
  execute_process(COMMAND ${PKG_CONFIG} --cflags --libs ${parts} OUTPUT_VARIABLE flags
                  RESULT_VARIABLE rc OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pkg-config --cflags --libs ${parts} failed")
  endif()
  separate_arguments(flags UNIX_COMMAND "${flags}")
  file(MAKE_DIRECTORY ${WORK_DIR}/build)
  run(${CXX} ${std} ${SOURCE_DIR}/tests/consumers/main.cpp -DEXPECTED_VERSION="${version}"
      ${flags} -o ${WORK_DIR}/build/consumer)
  if(WANT_IPC)
    run(${CXX} ${std} ${SOURCE_DIR}/tests/consumers/ipc_main.cpp ${flags} -o ${WORK_DIR}/build/consumer_ipc)
  endif()
elseif(MODE STREQUAL "plain")
  file(MAKE_DIRECTORY ${WORK_DIR}/build)
  run(${CXX} ${std} -I${SOURCE_DIR}/include ${SOURCE_DIR}/tests/consumers/main.cpp
      -DEXPECTED_VERSION="${version}" -pthread -o ${WORK_DIR}/build/consumer)
  if(WANT_IPC)
    run(${CXX} ${std} -I${SOURCE_DIR}/include ${SOURCE_DIR}/tests/consumers/ipc_main.cpp
        -pthread -o ${WORK_DIR}/build/consumer_ipc)
  endif()
else()
  message(FATAL_ERROR "unknown MODE ${MODE}")
endif()
run(${WORK_DIR}/build/consumer)
if(WANT_IPC)
  run(${WORK_DIR}/build/consumer_ipc)
endif()
file(REMOVE_RECURSE ${WORK_DIR})
