# ctest: install this build into a prefix inside the build tree, build
# examples/cpp against that installed package (find_package(hpsgd_ext)), and
# run it on 2 processes. Included from CMakeLists.txt when BUILD_TESTING.

set(HPSGD_TEST_PREFIX ${CMAKE_CURRENT_BINARY_DIR}/test-install)
set(HPSGD_EXAMPLE_BUILD ${CMAKE_CURRENT_BINARY_DIR}/example-cpp)

# Gloo's headers, for c10d::ProcessGroupGloo in the example and the engine test
# (the torch wheel has the header that includes them, not them): the system's
# (Debian: libgloo-dev) or -DHPSGD_GLOO_INCLUDE_DIR when there are any, else the
# declarations in tests/cpp/gloo_decls, which are enough to construct the group
# (its README says why; no network needed, the same in CI as on a laptop).
find_path(HPSGD_GLOO_INCLUDE_DIR gloo/algorithm.h DOC "folder holding gloo/algorithm.h")
if(NOT HPSGD_GLOO_INCLUDE_DIR)
  set(HPSGD_GLOO_INCLUDE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/tests/cpp/gloo_decls CACHE PATH
      "folder holding gloo/algorithm.h" FORCE)
endif()

add_test(NAME install COMMAND ${CMAKE_COMMAND} --install ${CMAKE_CURRENT_BINARY_DIR} --prefix ${HPSGD_TEST_PREFIX})
set_tests_properties(install PROPERTIES FIXTURES_SETUP hpsgd_installed)

# What find_package(Torch) needed here, it needs there (a CUDA wheel: the toolkit).
set(_opts -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE} -DCMAKE_PREFIX_PATH=${HPSGD_TEST_PREFIX}
          -DTorch_DIR=${Torch_DIR} -DHPSGD_GLOO_INCLUDE_DIR=${HPSGD_GLOO_INCLUDE_DIR})
foreach(var CUDA_TOOLKIT_ROOT_DIR CUDAToolkit_ROOT CUDA_nvrtc_LIBRARY)
  if(${var})
    list(APPEND _opts -D${var}=${${var}})
  endif()
endforeach()
add_test(NAME cpp_example_build
         COMMAND ${CMAKE_CTEST_COMMAND} --build-and-test ${CMAKE_CURRENT_SOURCE_DIR}/examples/cpp
                 ${HPSGD_EXAMPLE_BUILD} --build-generator ${CMAKE_GENERATOR}
                 --build-makeprogram ${CMAKE_MAKE_PROGRAM} --build-options ${_opts})
set_tests_properties(cpp_example_build PROPERTIES FIXTURES_REQUIRED hpsgd_installed
                     FIXTURES_SETUP hpsgd_example_built TIMEOUT 900)
if(DEFINED ENV{TORCH_CUDA_ARCH_LIST})  # read by Torch's CMake config, from the environment
  string(REPLACE ";" "\\;" _arch "$ENV{TORCH_CUDA_ARCH_LIST}")
  set_tests_properties(cpp_example_build PROPERTIES ENVIRONMENT "TORCH_CUDA_ARCH_LIST=${_arch}")
endif()
add_test(NAME cpp_example_2_ranks
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/examples/cpp/run_ranks.sh
                 ${HPSGD_EXAMPLE_BUILD}/hpsgd_train 2 ${CMAKE_CURRENT_BINARY_DIR}/example-run)
set_tests_properties(cpp_example_2_ranks PROPERTIES FIXTURES_REQUIRED hpsgd_example_built TIMEOUT 120
                     PASS_REGULAR_EXPRESSION "2 ranks, identical parameters")
