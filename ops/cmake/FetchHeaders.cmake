# Build-time header dependencies, fetched from a registry (nothing third-party is vendored). For each, in order:
#   1. <ENV> (CMake variable or environment variable): a folder the user provides
#   2. a cache from an earlier fetch: $ICEFORMER_CACHE_DIR, else $XDG_CACHE_HOME/iceformer, else ~/.cache/iceformer
#   3. Debian's -dev package from suite sid via apt-get download under a scratch APT_CONFIG (fetch_headers_apt.sh)
#   4. the project's release archive (machines with internet and no apt)
#
# ice_fetch_headers(<out_var> NAME <cache name> DEB <package> SUBDIR <folder under include/> CHECK <file under include/>
#                   ENV <variable> ARCHIVE_URL <url> ARCHIVE_GLOB <glob of the folder to use as include/SUBDIR>)
# sets <out_var> to an include/ folder holding SUBDIR/CHECK. The folder named by ENV may be that include/ folder or
# the SUBDIR folder itself.
if(DEFINED ENV{ICEFORMER_CACHE_DIR})
  set(ICE_CACHE_ROOT "$ENV{ICEFORMER_CACHE_DIR}")
elseif(DEFINED ENV{XDG_CACHE_HOME})
  set(ICE_CACHE_ROOT "$ENV{XDG_CACHE_HOME}/iceformer")
else()
  set(ICE_CACHE_ROOT "$ENV{HOME}/.cache/iceformer")
endif()

function(ice_fetch_headers out_var)
  cmake_parse_arguments(A "" "NAME;DEB;SUBDIR;CHECK;ENV;ARCHIVE_URL;ARCHIVE_GLOB" "" ${ARGN})
  set(_user "${${A_ENV}}")
  if(NOT _user AND DEFINED ENV{${A_ENV}})
    set(_user "$ENV{${A_ENV}}")
  endif()
  if(_user)
    foreach(_cand "${_user}" "${_user}/..")
      if(EXISTS "${_cand}/${A_CHECK}")
        get_filename_component(_cand "${_cand}" ABSOLUTE)
        message(STATUS "iceformer: ${A_NAME} headers from ${A_ENV}: ${_cand}")
        set(${out_var} "${_cand}" PARENT_SCOPE)
        return()
      endif()
    endforeach()
    get_filename_component(_name "${A_CHECK}" NAME)
    message(FATAL_ERROR "${A_ENV}=${_user} does not contain ${_name} (looked for ${A_CHECK} in it and its parent)")
  endif()

  set(_cache "${ICE_CACHE_ROOT}/${A_NAME}")
  if(EXISTS "${_cache}/include/${A_CHECK}")
    message(STATUS "iceformer: ${A_NAME} headers from cache: ${_cache}/include")
    set(${out_var} "${_cache}/include" PARENT_SCOPE)
    return()
  endif()

  set(_errors "")
  find_program(_apt_get apt-get)
  if(_apt_get)
    # Fetched into a staging folder, then moved into the cache in one rename.
    set(_stage "${_cache}.staging-apt")
    file(REMOVE_RECURSE "${_stage}")
    execute_process(
      COMMAND sh "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/fetch_headers_apt.sh" "${A_DEB}" "${A_SUBDIR}" "${A_CHECK}"
              "${_stage}"
      RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
    if(_rc EQUAL 0 AND EXISTS "${_stage}/include/${A_CHECK}")
      file(REMOVE_RECURSE "${_cache}")
      file(RENAME "${_stage}" "${_cache}")
      message(STATUS "iceformer: ${_out}")
      message(STATUS "iceformer: ${A_NAME} headers from Debian ${A_DEB}: ${_cache}/include")
      set(${out_var} "${_cache}/include" PARENT_SCOPE)
      return()
    endif()
    file(REMOVE_RECURSE "${_stage}")
    string(APPEND _errors "  - Debian ${A_DEB} (sid) via apt-get download failed (exit ${_rc}): ${_err}\n")
  else()
    string(APPEND _errors "  - apt-get not available\n")
  endif()

  set(_archive "${ICE_CACHE_ROOT}/${A_NAME}.tgz")
  file(DOWNLOAD "${A_ARCHIVE_URL}" "${_archive}" STATUS _st TIMEOUT 120 INACTIVITY_TIMEOUT 30)
  list(GET _st 0 _code)
  if(_code EQUAL 0)
    set(_stage "${_cache}.staging-tgz")
    file(REMOVE_RECURSE "${_stage}")
    file(ARCHIVE_EXTRACT INPUT "${_archive}" DESTINATION "${_stage}")
    file(GLOB _found LIST_DIRECTORIES true "${_stage}/${A_ARCHIVE_GLOB}")
    if(_found)
      list(GET _found 0 _found)
      file(MAKE_DIRECTORY "${_cache}.tmp/include")
      file(RENAME "${_found}" "${_cache}.tmp/include/${A_SUBDIR}")
      if(EXISTS "${_cache}.tmp/include/${A_CHECK}")
        file(REMOVE_RECURSE "${_cache}" "${_stage}")
        file(RENAME "${_cache}.tmp" "${_cache}")
        file(REMOVE "${_archive}")
        message(STATUS "iceformer: ${A_NAME} headers from ${A_ARCHIVE_URL}: ${_cache}/include")
        set(${out_var} "${_cache}/include" PARENT_SCOPE)
        return()
      endif()
      file(REMOVE_RECURSE "${_cache}.tmp")
    endif()
    file(REMOVE_RECURSE "${_stage}")
    string(APPEND _errors "  - archive ${A_ARCHIVE_URL} has no ${A_ARCHIVE_GLOB} with ${A_CHECK}\n")
  else()
    file(REMOVE "${_archive}")
    string(APPEND _errors "  - download of ${A_ARCHIVE_URL} failed: ${_st}\n")
  endif()

  message(FATAL_ERROR
    "iceformer: could not obtain the ${A_NAME} headers.\n${_errors}"
    "Provide them yourself (Debian's ${A_DEB}, or the release archive) and set\n"
    "  ${A_ENV}=/path/to/include  pip install .\n")
endfunction()

# ONNX Runtime's C/C++ headers (the onnxruntime wheel ships none): ORT_HEADERS_DIR holds onnxruntime_cxx_api.h.
set(ICEFORMER_ORT_VERSION "1.23.2" CACHE STRING "ONNX Runtime release whose headers are fetched (API 23)")
if(NOT ORT_INCLUDE_DIR AND DEFINED ENV{ORT_INCLUDE_DIR})
  set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}")
endif()
if(ORT_INCLUDE_DIR AND EXISTS "${ORT_INCLUDE_DIR}/onnxruntime_cxx_api.h")  # a release archive's flat include/
  set(ORT_HEADERS_DIR "${ORT_INCLUDE_DIR}")
  message(STATUS "iceformer: ONNX Runtime headers from ORT_INCLUDE_DIR: ${ORT_HEADERS_DIR}")
else()
  ice_fetch_headers(_ort_include NAME "ort-headers-${ICEFORMER_ORT_VERSION}" DEB libonnxruntime-dev
    SUBDIR onnxruntime CHECK onnxruntime/onnxruntime_cxx_api.h ENV ORT_INCLUDE_DIR
    ARCHIVE_URL "https://github.com/microsoft/onnxruntime/releases/download/v${ICEFORMER_ORT_VERSION}/onnxruntime-linux-x64-${ICEFORMER_ORT_VERSION}.tgz"
    ARCHIVE_GLOB "*/include")
  set(ORT_HEADERS_DIR "${_ort_include}/onnxruntime")
endif()

# Google Highway (portable SIMD, header-only as used here: our own dispatch point picks the target), >= 1.2.
set(ICEFORMER_HWY_VERSION "1.3.0" CACHE STRING "Highway release fetched when Debian's package is unreachable")
ice_fetch_headers(HWY_HEADERS_DIR NAME "hwy-headers-${ICEFORMER_HWY_VERSION}" DEB libhwy-dev SUBDIR hwy
  CHECK hwy/highway.h ENV HWY_INCLUDE_DIR
  ARCHIVE_URL "https://github.com/google/highway/archive/refs/tags/${ICEFORMER_HWY_VERSION}.tar.gz"
  ARCHIVE_GLOB "*/hwy")
