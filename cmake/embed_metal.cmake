# Embeds a Metal source file as a C++ string constant, with its project includes
# (#include "ops/...") inlined, since a Metal library compiled from source at run time
# (newLibraryWithSource:) cannot read files. Used by CMakeLists.txt (macOS) and
# emulation/CMakeLists.txt (Linux), so both run the same text.
#   cmake -DROOT=<repo> -DSOURCE=ops/optim/optim_kernels.metal -DOUT=<file.cc>
#         -DNAMESPACE=tfmps::optim -DNAME=kOptimKernelsSource -P cmake/embed_metal.cmake
file(READ "${ROOT}/${SOURCE}" text)
string(REGEX MATCHALL "#include \"[^\"]+\"" includes "${text}")
foreach(inc IN LISTS includes)
  string(REGEX REPLACE "#include \"([^\"]+)\"" "\\1" path "${inc}")
  file(READ "${ROOT}/${path}" body)
  string(REPLACE "${inc}" "${body}" text "${text}")
endforeach()
string(REPLACE "::" ";" parts "${NAMESPACE}")
set(open "")
set(close "")
foreach(ns IN LISTS parts)
  string(APPEND open "namespace ${ns} {\n")
  string(APPEND close "}  // namespace ${ns}\n")
endforeach()
set(content "// Generated from ${SOURCE} by cmake/embed_metal.cmake: do not edit.\n#include \"ops/optim/optim_kernels.h\"\n${open}extern const char ${NAME}[];\nconst char ${NAME}[] = R\"tfmps_metal(${text})tfmps_metal\";\n${close}")
# Rewrite only on change, so that the build does not recompile needlessly.
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL content)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${content}")
