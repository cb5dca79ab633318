# EdgeSdkConfig.cmake: build edge-sdk bundles as part of a CMake project, and check them with the C verifier.
#
#   execute_process(COMMAND edge-sdk cmake-dir OUTPUT_VARIABLE EdgeSdk_DIR OUTPUT_STRIP_TRAILING_WHITESPACE)
#   find_package(EdgeSdk 0.1 CONFIG REQUIRED)
#   edge_sdk_add_bundle(NAME topics RECIPE ${CMAKE_SOURCE_DIR}/models/minilm-topics.toml
#                       OUTPUT ${CMAKE_BINARY_DIR}/bundles/topics)
#   target_link_libraries(firmware PRIVATE EdgeSdk::bundle_topics EdgeSdk::verify)
#   edge_sdk_verify_bundle(TARGET firmware BUNDLE topics)
#
# Components: `verify` (the C verifier, library EdgeSdk::verify and program edge_bundle_verify, built from the
# sources shipped beside this file). It is added when asked for, or when no components are named.
#
# Cache variables: EDGE_SDK_EXECUTABLE (the edge-sdk program; default: edge-sdk on the PATH).
# See docs/firmware.md for the full reference.

if(CMAKE_VERSION VERSION_LESS 3.20)
  # DEPFILE of add_custom_command needs 3.20 with the Makefile generators; without it an edited model would
  # not rebuild the bundle, which is worse than failing here.
  set(EdgeSdk_FOUND FALSE)
  set(EdgeSdk_NOT_FOUND_MESSAGE "EdgeSdk needs CMake >= 3.20 (found ${CMAKE_VERSION})")
  return()
endif()

# find_package gives this file its own policy scope, and functions keep the policies of where they were defined:
# the depfile is read the 3.20 way (paths relative to the binary folder, transformed for Ninja) even in projects
# whose cmake_minimum_required is older.
cmake_policy(SET CMP0116 NEW)

get_filename_component(_edge_sdk_cmake_dir "${CMAKE_CURRENT_LIST_FILE}" DIRECTORY)
get_filename_component(EdgeSdk_HOOKS_DIR "${_edge_sdk_cmake_dir}/.." ABSOLUTE)
set(EdgeSdk_VERIFY_SOURCE_DIR "${EdgeSdk_HOOKS_DIR}/c")

# Installed from a wheel, this file is <env>/lib/pythonX.Y/site-packages/edge_sdk/native_hooks/cmake/: that
# environment's edge-sdk is the one that matches it, found even when the environment is not activated (PATHS come
# after the PATH, so an edge-sdk the user put first still wins).
set(_edge_sdk_env_bin "")
if(EdgeSdk_HOOKS_DIR MATCHES "^(.*)/lib/python[^/]*/site-packages/edge_sdk/native_hooks$")
  set(_edge_sdk_env_bin "${CMAKE_MATCH_1}/bin")
endif()
find_program(EDGE_SDK_EXECUTABLE NAMES edge-sdk PATHS ${_edge_sdk_env_bin}
             DOC "The edge-sdk program that builds bundles and headers")

# --- component verify: the C verifier ------------------------------------------------------------------------

set(_edge_sdk_want_verify FALSE)
if(NOT EdgeSdk_FIND_COMPONENTS OR "verify" IN_LIST EdgeSdk_FIND_COMPONENTS)
  set(_edge_sdk_want_verify TRUE)
endif()
set(EdgeSdk_verify_FOUND FALSE)
if(_edge_sdk_want_verify)
  if(TARGET EdgeSdk::verify)
    # Another find_package(EdgeSdk) (or the project itself) added it already: a second add_subdirectory of the
    # same sources would define the targets twice.
    set(EdgeSdk_verify_FOUND TRUE)
  elseif(EXISTS "${EdgeSdk_VERIFY_SOURCE_DIR}/CMakeLists.txt")
    add_subdirectory("${EdgeSdk_VERIFY_SOURCE_DIR}" "${CMAKE_BINARY_DIR}/edge_sdk_verify" EXCLUDE_FROM_ALL)
    if(TARGET edge_bundle_verify_lib AND NOT TARGET EdgeSdk::verify)
      add_library(EdgeSdk::verify ALIAS edge_bundle_verify_lib)
    endif()
    if(TARGET EdgeSdk::verify)
      set(EdgeSdk_verify_FOUND TRUE)
    endif()
  endif()
  if(NOT EdgeSdk_verify_FOUND AND EdgeSdk_FIND_REQUIRED_verify)
    set(EdgeSdk_FOUND FALSE)
    set(EdgeSdk_NOT_FOUND_MESSAGE
        "EdgeSdk component 'verify' needs the C verifier's sources in ${EdgeSdk_VERIFY_SOURCE_DIR}; reinstall edge-sdk")
    return()
  endif()
endif()
foreach(_edge_sdk_component IN LISTS EdgeSdk_FIND_COMPONENTS)
  if(NOT _edge_sdk_component STREQUAL "verify" AND EdgeSdk_FIND_REQUIRED_${_edge_sdk_component})
    set(EdgeSdk_FOUND FALSE)
    set(EdgeSdk_NOT_FOUND_MESSAGE "EdgeSdk has no component '${_edge_sdk_component}' (it has: verify)")
    return()
  endif()
endforeach()

# --- helpers -----------------------------------------------------------------------------------------------

function(_edge_sdk_require_executable caller)
  if(NOT EDGE_SDK_EXECUTABLE)
    message(FATAL_ERROR "${caller}: the edge-sdk program was not found; install edge-sdk (pip install "
                        "edge-sdk[host]) or set -DEDGE_SDK_EXECUTABLE=/path/to/edge-sdk")
  endif()
endfunction()

function(_edge_sdk_absolute out path base)
  get_filename_component(_absolute "${path}" ABSOLUTE BASE_DIR "${base}")
  set(${out} "${_absolute}" PARENT_SCOPE)
endfunction()

# edge_sdk_add_bundle(NAME <name>
#                     (RECIPE <recipe.toml> | MODEL <model dir> TASK <task> [LABELS <label>...])
#                     [PROFILE <name | profile.toml>] OUTPUT <bundle dir> [SIGN_KEY <edge-sdk.key>]
#                     [EXTRA_ARGS <edge-sdk build flags>...])
#
# Builds the bundle with `edge-sdk build` when its manifest is missing or an input it read changed (the
# depfile edge-sdk writes lists every file it read), then generates ${CMAKE_CURRENT_BINARY_DIR}/edge_bundle_<name>.h.
# Defines the INTERFACE library edge_bundle_<name> (alias EdgeSdk::bundle_<name>): linking it builds both and
# puts the header on the include path. Sets in the caller's scope, and as properties of edge_bundle_<name>:
#   EDGE_SDK_BUNDLE_<name>_DIR       / EDGE_SDK_BUNDLE_DIR       the bundle folder
#   EDGE_SDK_BUNDLE_<name>_MANIFEST  / EDGE_SDK_BUNDLE_MANIFEST  its manifest.json
#   EDGE_SDK_BUNDLE_<name>_HEADER    / EDGE_SDK_BUNDLE_HEADER    the generated header
function(edge_sdk_add_bundle)
  cmake_parse_arguments(PARSE_ARGV 0 ARG "" "NAME;RECIPE;MODEL;TASK;PROFILE;OUTPUT;SIGN_KEY" "LABELS;EXTRA_ARGS")
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "edge_sdk_add_bundle: unknown arguments: ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT ARG_NAME MATCHES "^[A-Za-z_][A-Za-z0-9_]*$")
    message(FATAL_ERROR "edge_sdk_add_bundle: NAME '${ARG_NAME}' is not a C identifier; use letters, digits and "
                        "'_', not starting with a digit (it names edge_bundle_<name>.h and the target)")
  endif()
  set(_name "${ARG_NAME}")
  string(TOLOWER "${_name}" _lower)
  if(_lower MATCHES "^(types|dim|verify)$")
    # Their symbols would collide with the shared header types or the C verifier (edge_bundle_verify, its header).
    message(FATAL_ERROR "edge_sdk_add_bundle: NAME '${_name}' is reserved; choose another (e.g. topics)")
  endif()
  if(TARGET edge_bundle_${_name})
    message(FATAL_ERROR "edge_sdk_add_bundle: a bundle named '${_name}' was added already")
  endif()
  if(NOT ARG_OUTPUT)
    message(FATAL_ERROR "edge_sdk_add_bundle(${_name}): OUTPUT <bundle dir> is required")
  endif()
  if(ARG_RECIPE AND ARG_MODEL)
    message(FATAL_ERROR "edge_sdk_add_bundle(${_name}): give RECIPE or MODEL, not both")
  endif()
  _edge_sdk_require_executable("edge_sdk_add_bundle(${_name})")

  # Relative inputs are the project's files; a relative OUTPUT is a build product.
  _edge_sdk_absolute(_out "${ARG_OUTPUT}" "${CMAKE_CURRENT_BINARY_DIR}")
  set(_manifest "${_out}/manifest.json")
  set(_depfile "${CMAKE_CURRENT_BINARY_DIR}/edge_bundle_${_name}.d")
  set(_header "${CMAKE_CURRENT_BINARY_DIR}/edge_bundle_${_name}.h")
  set(_depends "")
  if(ARG_RECIPE)
    _edge_sdk_absolute(_source "${ARG_RECIPE}" "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND _depends "${_source}")
    set(_source_args "${_source}")
    if(ARG_TASK)
      list(APPEND _source_args --task "${ARG_TASK}")
    endif()
  elseif(ARG_MODEL)
    if(NOT ARG_TASK)
      message(FATAL_ERROR "edge_sdk_add_bundle(${_name}): MODEL needs TASK (e.g. TASK seq-cls)")
    endif()
    _edge_sdk_absolute(_source "${ARG_MODEL}" "${CMAKE_CURRENT_SOURCE_DIR}")
    # A folder is no file dependency; its config.json is always read, so an edit of it rebuilds even before
    # the first depfile exists. The depfile adds the weights, tokenizer and everything else the build read.
    if(IS_DIRECTORY "${_source}" AND EXISTS "${_source}/config.json")
      list(APPEND _depends "${_source}/config.json")
    elseif(NOT IS_DIRECTORY "${_source}")
      list(APPEND _depends "${_source}")
    endif()
    set(_source_args "${_source}" --task "${ARG_TASK}")
  else()
    message(FATAL_ERROR "edge_sdk_add_bundle(${_name}): give RECIPE <recipe.toml> or MODEL <dir> TASK <task>")
  endif()
  if(ARG_LABELS)
    list(JOIN ARG_LABELS "," _labels)
    list(APPEND _source_args --labels "${_labels}")
  endif()
  set(_options "")
  if(ARG_PROFILE)
    set(_profile "${ARG_PROFILE}")
    if(_profile MATCHES "\\.toml$")  # a profile file, not a built-in name
      _edge_sdk_absolute(_profile "${_profile}" "${CMAKE_CURRENT_SOURCE_DIR}")
      list(APPEND _depends "${_profile}")
    endif()
    list(APPEND _options --profile "${_profile}")
  endif()
  if(ARG_SIGN_KEY)
    _edge_sdk_absolute(_key "${ARG_SIGN_KEY}" "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND _depends "${_key}")
    list(APPEND _options --sign "${_key}")
  endif()

  add_custom_command(
    OUTPUT "${_manifest}"
    COMMAND "${EDGE_SDK_EXECUTABLE}" build ${_source_args} --out "${_out}" --overwrite --quiet --json
            --depfile "${_depfile}" ${_options} ${ARG_EXTRA_ARGS}
    DEPENDS ${_depends}
    DEPFILE "${_depfile}"
    COMMENT "edge-sdk: building bundle ${_name} in ${_out}"
    VERBATIM)
  add_custom_command(
    OUTPUT "${_header}"
    COMMAND "${EDGE_SDK_EXECUTABLE}" header "${_out}" --name "${_name}" --out "${_header}"
    DEPENDS "${_manifest}"
    COMMENT "edge-sdk: generating edge_bundle_${_name}.h"
    VERBATIM)
  add_custom_target(edge_bundle_${_name}_files DEPENDS "${_manifest}" "${_header}")
  # `clean` removes the whole bundle, not only the manifest CMake knows as the output.
  set_property(TARGET edge_bundle_${_name}_files APPEND PROPERTY ADDITIONAL_CLEAN_FILES "${_out}" "${_depfile}")

  add_library(edge_bundle_${_name} INTERFACE)
  add_library(EdgeSdk::bundle_${_name} ALIAS edge_bundle_${_name})
  target_include_directories(edge_bundle_${_name} INTERFACE "${CMAKE_CURRENT_BINARY_DIR}")
  # Dependencies of an INTERFACE library pass to whatever links it: the bundle and header exist before a
  # consumer's sources compile.
  add_dependencies(edge_bundle_${_name} edge_bundle_${_name}_files)
  set_target_properties(edge_bundle_${_name} PROPERTIES
    EDGE_SDK_BUNDLE_DIR "${_out}" EDGE_SDK_BUNDLE_MANIFEST "${_manifest}" EDGE_SDK_BUNDLE_HEADER "${_header}")

  set(EDGE_SDK_BUNDLE_${_name}_DIR "${_out}" PARENT_SCOPE)
  set(EDGE_SDK_BUNDLE_${_name}_MANIFEST "${_manifest}" PARENT_SCOPE)
  set(EDGE_SDK_BUNDLE_${_name}_HEADER "${_header}" PARENT_SCOPE)
endfunction()

# edge_sdk_verify_bundle(TARGET <target> BUNDLE <name> [PUBLIC_KEY <edge-sdk.pub>])
#
# After <target> builds, check the bundle added by edge_sdk_add_bundle(NAME <name>): every file against the
# manifest's sha256 and, with PUBLIC_KEY, the manifest's signature. A failed check fails the build. Uses the C
# verifier (edge_bundle_verify) when the `verify` component is there, else `edge-sdk verify`.
function(edge_sdk_verify_bundle)
  cmake_parse_arguments(PARSE_ARGV 0 ARG "" "TARGET;BUNDLE;PUBLIC_KEY" "")
  if(ARG_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "edge_sdk_verify_bundle: unknown arguments: ${ARG_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT TARGET "${ARG_TARGET}")
    message(FATAL_ERROR "edge_sdk_verify_bundle: TARGET '${ARG_TARGET}' is not a target")
  endif()
  if(NOT TARGET "edge_bundle_${ARG_BUNDLE}")
    message(FATAL_ERROR "edge_sdk_verify_bundle: no bundle '${ARG_BUNDLE}'; add it first with "
                        "edge_sdk_add_bundle(NAME ${ARG_BUNDLE} ...)")
  endif()
  get_target_property(_dir edge_bundle_${ARG_BUNDLE} EDGE_SDK_BUNDLE_DIR)
  set(_key_args "")
  if(ARG_PUBLIC_KEY)
    _edge_sdk_absolute(_key "${ARG_PUBLIC_KEY}" "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  if(TARGET edge_bundle_verify)
    if(ARG_PUBLIC_KEY)
      set(_key_args --public-key "${_key}")
    endif()
    set(_command "$<TARGET_FILE:edge_bundle_verify>" ${_key_args} "${_dir}")
    add_dependencies(${ARG_TARGET} edge_bundle_verify)
  else()
    _edge_sdk_require_executable("edge_sdk_verify_bundle(${ARG_BUNDLE})")
    if(ARG_PUBLIC_KEY)
      set(_key_args --trusted-key "${_key}")
    endif()
    set(_command "${EDGE_SDK_EXECUTABLE}" verify "${_dir}" ${_key_args})
  endif()
  add_dependencies(${ARG_TARGET} edge_bundle_${ARG_BUNDLE})
  add_custom_command(TARGET ${ARG_TARGET} POST_BUILD
    COMMAND ${_command}
    COMMENT "edge-sdk: verifying bundle ${ARG_BUNDLE}"
    VERBATIM)
endfunction()

unset(_edge_sdk_want_verify)
unset(_edge_sdk_component)
unset(_edge_sdk_cmake_dir)
unset(_edge_sdk_env_bin)
