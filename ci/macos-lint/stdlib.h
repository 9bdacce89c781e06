/* Lint-only stand-in for the macOS SDK header (see TargetConditionals.h). */
#ifndef RISEFRONT_CI_STDLIB_H
#define RISEFRONT_CI_STDLIB_H
#include <stddef.h>
void abort(void);
#endif
