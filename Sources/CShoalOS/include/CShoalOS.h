// Thin wrappers over Linux calls that Glibc's Swift module leaves out (GNU extensions, declared
// only under _GNU_SOURCE): thread affinity. Each returns 0 on success, -1 with errno set.
#ifndef C_SHOAL_OS_H
#define C_SHOAL_OS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Pins the calling thread to `cpu` (sched_setaffinity on thread 0, Linux's per-thread call).
int shoal_pin_current_thread(int cpu);

/// The CPUs this process may run on, as a bitmask of `bytes` bytes: bit c of byte c/8 for CPU c
/// (sched_getaffinity).
int shoal_allowed_cpus(uint8_t *mask, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
