// What a library of the package was built with, for the loader's check and
// `groundwork_cpu.report()`. Included by exactly one source file of each library (it defines
// functions, so that each library carries its own copy); setup.py defines the macros.
#ifndef GROUNDWORK_CPU_CSRC_BUILD_INFO_H_
#define GROUNDWORK_CPU_CSRC_BUILD_INFO_H_

#if !defined(GROUNDWORK_CPU_JAXLIB) || !defined(GROUNDWORK_CPU_COMPILER) || \
    !defined(GROUNDWORK_CPU_BUILT_WITH)
#error "build with setup.py, which defines the GROUNDWORK_CPU_ macros this file uses"
#endif

// The jaxlib version whose XLA FFI headers the library was compiled with: a handler is only
// known to work with the XLA it was compiled for, so the loader refuses to register it with
// another.
extern "C" const char* groundwork_cpu_jaxlib_version() { return GROUNDWORK_CPU_JAXLIB; }

// One line: compiler, jaxlib and the oneDNN it links to.
extern "C" const char* groundwork_cpu_built_with() {
  return GROUNDWORK_CPU_COMPILER " " __VERSION__ ", " GROUNDWORK_CPU_BUILT_WITH;
}

#endif  // GROUNDWORK_CPU_CSRC_BUILD_INFO_H_
