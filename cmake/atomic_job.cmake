# One compile graph job, run as `cmake -P`: iree-compile (or a copy) into a temporary name that
# is unique to this process, then an atomic rename onto the output.
#
# Why unique: ninja starts every job in its own process group, so a build killed with SIGKILL
# leaves its running iree-compile jobs alive (orphans) and they finish later. A resumed build
# that compiles the same module at the same time must not share their temporary file: with one
# fixed name, whichever renamed first made the other's rename fail. Both write identical bytes
# (iree-compile is deterministic), so the last rename simply wins.
#
#   -DMODE=compile -DTOOL=iree-compile -DIN=x.mlir -DOUT=x.vmfb -DFLAGS=<;-list> -P atomic_job.cmake
#   -DMODE=copy -DIN=src -DOUT=dst -P atomic_job.cmake
string(RANDOM LENGTH 10 _id)
set(_tmp "${OUT}.tmp.${_id}")
if(MODE STREQUAL "compile")
  execute_process(COMMAND ${TOOL} ${IN} -o ${_tmp} ${FLAGS} RESULT_VARIABLE _rc)
elseif(MODE STREQUAL "copy")
  execute_process(COMMAND ${CMAKE_COMMAND} -E copy ${IN} ${_tmp} RESULT_VARIABLE _rc)
else()
  message(FATAL_ERROR "atomic_job.cmake: unknown MODE '${MODE}'")
endif()
if(NOT _rc EQUAL 0)
  file(REMOVE ${_tmp})
  message(FATAL_ERROR "failed (${_rc}): ${IN} -> ${OUT}")
endif()
file(RENAME ${_tmp} ${OUT})
