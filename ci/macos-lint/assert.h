/* Lint-only stand-in for the macOS SDK header (see TargetConditionals.h). */
#ifndef RISEFRONT_CI_ASSERT_H
#define RISEFRONT_CI_ASSERT_H
#define assert(x) ((void)0)
#define static_assert _Static_assert
#endif
