#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <string.h>

#include "CShoalOS.h"

int shoal_pin_current_thread(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) {
        errno = EINVAL;
        return -1;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int shoal_allowed_cpus(uint8_t *mask, size_t bytes) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    memset(mask, 0, bytes);
    for (size_t cpu = 0; cpu < bytes * 8 && cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &set)) mask[cpu / 8] |= (uint8_t)(1u << (cpu % 8));
    return 0;
}
