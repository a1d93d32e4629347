# ctest: install this build into a prefix inside the build tree, build
# examples/cpp against that installed package (find_package(hpsgd_ext)), and
# run it on 2 processes. Included from CMakeLists.txt when BUILD_TESTING.

set(HPSGD_TEST_PREFIX ${CMAKE_CURRENT_BINARY_DIR}/test-install)
set(HPSGD_EXAMPLE_BUILD ${CMAKE_CURRENT_BINARY_DIR}/example-cpp)

# Gloo's headers, for the example's c10d::ProcessGroupGloo (the torch wheel has the
# header that includes them, not them). Found on the system (Debian: libgloo-dev),
# given as -DHPSGD_GLOO_INCLUDE_DIR, or unpacked from Debian's libgloo-dev package
# into the build tree (apt-get download: nothing is installed on the system).
find_path(HPSGD_GLOO_INCLUDE_DIR gloo/algorithm.h DOC "folder holding gloo/algorithm.h")
if(NOT HPSGD_GLOO_INCLUDE_DIR)
  find_program(HPSGD_APT_GET apt-get)
  find_program(HPSGD_DPKG_DEB dpkg-deb)
  set(_gloo ${CMAKE_CURRENT_BINARY_DIR}/gloo-deb)
  if(HPSGD_APT_GET AND HPSGD_DPKG_DEB)
    file(MAKE_DIRECTORY ${_gloo})
    message(STATUS "Gloo headers: unpacking Debian's libgloo-dev into ${_gloo}")
    execute_process(COMMAND ${HPSGD_APT_GET} download libgloo-dev WORKING_DIRECTORY ${_gloo}
                    RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
    if(NOT _rc EQUAL 0)  # a machine whose package lists were never fetched
      execute_process(COMMAND ${HPSGD_APT_GET} update -qq OUTPUT_QUIET ERROR_QUIET)
      execute_process(COMMAND ${HPSGD_APT_GET} download libgloo-dev WORKING_DIRECTORY ${_gloo}
                      RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
    endif()
    file(GLOB _deb ${_gloo}/libgloo-dev_*.deb)
    if(_deb)
      list(GET _deb 0 _deb)
      execute_process(COMMAND ${HPSGD_DPKG_DEB} -x ${_deb} ${_gloo}/root RESULT_VARIABLE _rc)
      if(_rc EQUAL 0 AND EXISTS ${_gloo}/root/usr/include/gloo/algorithm.h)
        set(HPSGD_GLOO_INCLUDE_DIR ${_gloo}/root/usr/include CACHE PATH "folder holding gloo/algorithm.h" FORCE)
      endif()
    endif()
  endif()
endif()

add_test(NAME install COMMAND ${CMAKE_COMMAND} --install ${CMAKE_CURRENT_BINARY_DIR} --prefix ${HPSGD_TEST_PREFIX})
set_tests_properties(install PROPERTIES FIXTURES_SETUP hpsgd_installed)

if(HPSGD_GLOO_INCLUDE_DIR)
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
else()
  message(WARNING "Gloo's headers were not found (and Debian's libgloo-dev could not be fetched): "
                  "the C++ example tests will fail; pass -DHPSGD_GLOO_INCLUDE_DIR=<folder holding gloo/algorithm.h>")
  add_test(NAME cpp_example_build COMMAND sh -c "echo 'no Gloo headers: see the CMake warning (HPSGD_GLOO_INCLUDE_DIR)'; exit 1")
endif()
