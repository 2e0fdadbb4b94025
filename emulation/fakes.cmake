# The CPU fakes of Foundation, Metal and MPS (Linux emulation only), as a CMake fragment
# that emulation/CMakeLists.txt includes. It defines:
#   TFMPS_EMU_FAKE_SOURCES  the fakes' sources, with their per-file compile flags set
#   fakes_test              their GoogleTest program (emulation/tests/fakes_test.mm),
#                           added at the end of the including directory, once the
#                           library target tfmps_metal_emu and GTest exist
#
# By hand, the same build is (from the repository root):
#   OBJC="clang++-19 -x objective-c++ -std=c++17 -fblocks -fobjc-runtime=macosx-14.0 -fPIC -I. -Iops/metal_stubs"
#   $OBJC -fno-objc-arc -c emulation/foundation/nsobject.mm          # the root class: no ARC
#   $OBJC -fobjc-arc -c emulation/foundation/foundation.mm           # everything else: ARC
#   $OBJC -fobjc-arc -c emulation/metal/metal.mm
#   $OBJC -fobjc-arc -c emulation/mps/mps.mm
#   $OBJC -fobjc-arc -c emulation/mps/mps_optimizers.mm
#   $OBJC -fobjc-arc -c emulation/mps/mps_cnn.mm   (and mps_cnn_{transpose,fc,norm,pooling}.mm)
# and the objects link into one shared library with emulation/runtime/image_register.c,
# the runtime, the CPU backends (ops/optim/optim_cpu.cc, ops/conv/conv_*.cc: the fakes compute with them), -lBlocksRuntime
# and -lpthread.

get_filename_component(_tfmps_fakes_dir "${CMAKE_CURRENT_LIST_DIR}" ABSOLUTE)

set(TFMPS_EMU_FAKE_SOURCES
  ${_tfmps_fakes_dir}/foundation/nsobject.mm
  ${_tfmps_fakes_dir}/foundation/foundation.mm
  ${_tfmps_fakes_dir}/metal/metal.mm
  ${_tfmps_fakes_dir}/mps/mps.mm
  ${_tfmps_fakes_dir}/mps/mps_optimizers.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_transpose.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_fc.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_norm.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_pooling.mm
  ${_tfmps_fakes_dir}/shaders/shaders.cc
  ${_tfmps_fakes_dir}/shaders/kernels.cc)

# tf-mps's Metal kernels as C++: <metal_stdlib> is the shim in shaders/include, MSL's
# [[buffer(i)]] attributes are unknown to C++, and no contraction into fma, so that a
# kernel rounds as the CPU backend does.
set_source_files_properties(${_tfmps_fakes_dir}/shaders/kernels.cc PROPERTIES
  COMPILE_OPTIONS "-isystem;${_tfmps_fakes_dir}/shaders/include;-Wno-unknown-attributes;-ffp-contract=off;-O2")

set(_tfmps_fakes_objc -fobjc-runtime=macosx-14.0 -fblocks)
# The root class implements reference counting itself, which ARC forbids.
set_source_files_properties(${_tfmps_fakes_dir}/foundation/nsobject.mm
  PROPERTIES COMPILE_OPTIONS "${_tfmps_fakes_objc};-fno-objc-arc")
set_source_files_properties(
  ${_tfmps_fakes_dir}/foundation/foundation.mm
  ${_tfmps_fakes_dir}/metal/metal.mm
  ${_tfmps_fakes_dir}/mps/mps.mm
  ${_tfmps_fakes_dir}/mps/mps_optimizers.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_transpose.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_fc.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_norm.mm
  ${_tfmps_fakes_dir}/mps/mps_cnn_pooling.mm
  ${_tfmps_fakes_dir}/tests/fakes_test.mm
  PROPERTIES COMPILE_OPTIONS "${_tfmps_fakes_objc};-fobjc-arc")

function(_tfmps_add_fakes_test)
  if(NOT TARGET tfmps_metal_emu OR NOT TARGET GTest::gtest)
    message(WARNING "fakes.cmake: no tfmps_metal_emu or GTest target; fakes_test not built")
    return()
  endif()
  add_executable(fakes_test ${_tfmps_fakes_dir}/tests/fakes_test.mm $<TARGET_OBJECTS:tfmps_objc_image>)
  target_link_libraries(fakes_test PRIVATE tfmps_metal_emu tfmps_objc GTest::gtest GTest::gtest_main)
  add_test(NAME fakes_test COMMAND fakes_test)
  # The same tests under the debug mode: random delays and NaN-filled fresh storage.
  add_test(NAME fakes_test_debug COMMAND fakes_test)
  set_tests_properties(fakes_test_debug PROPERTIES ENVIRONMENT "TFMPS_METAL_EMU_DEBUG=1")
endfunction()
cmake_language(DEFER CALL _tfmps_add_fakes_test)
