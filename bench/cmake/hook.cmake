# Builds bench/ without touching the top-level CMakeLists.txt:
#   cmake -S <repo> -B <build> -DCMAKE_PROJECT_finetuned_INCLUDE=<repo>/bench/cmake/hook.cmake
# bench/CMakeLists.txt is included at the end of the top-level CMakeLists.txt
# (deferred, so that the worker targets exist; deferred code may not call
# add_subdirectory, hence include), and skipped when the top level already
# has add_subdirectory(bench).
function(ft_bench_hook_add)
  if(NOT TARGET ft_bench_step_time)
    include("${FT_BENCH_HOOK_DIR}/CMakeLists.txt")
  endif()
endfunction()
get_filename_component(FT_BENCH_HOOK_DIR "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL ft_bench_hook_add)
