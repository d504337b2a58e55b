/*
 * fuzz.h - the entry points every harness defines (libFuzzer's names), so
 * that harnesses and replay_main.c agree on them and build warning-free.
 */
#ifndef CB_FUZZ_H
#define CB_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* One input; returns 0 (libFuzzer reserves other values). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional, once before the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

#endif /* CB_FUZZ_H */
