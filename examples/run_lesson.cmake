# Runs one lesson for ctest: it must exit 0, and its output must contain every line
# in EXPECT (literal texts separated by "|"), so a lesson that runs but prints the wrong
# figures fails too. -DPROGRAM=... -DEXPECT=...
execute_process(COMMAND ${PROGRAM} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}")
if(err)
  message("stderr:\n${err}")
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} exited with ${rc}")
endif()
string(REPLACE "|" ";" expect_list "${EXPECT}")
foreach(text IN LISTS expect_list)
  string(FIND "${out}" "${text}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${PROGRAM}: expected this in the output, not found: ${text}")
  endif()
endforeach()
