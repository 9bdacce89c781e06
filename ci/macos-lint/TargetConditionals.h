/* Stand-in for the macOS SDK header of this name, so that C code in dependencies (ring's)
 * compiles with clang on Linux for `cargo clippy --target aarch64-apple-darwin` in .ci/run.
 * Lint only: nothing built with it is linked or run. */
#ifndef RISEFRONT_CI_TARGET_CONDITIONALS_H
#define RISEFRONT_CI_TARGET_CONDITIONALS_H
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#endif
