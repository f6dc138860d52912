// One instruction set's kernels, filled in by each kernels_<isa>.c from kernel_bodies.h.
#ifndef SHOAL_KERNEL_TABLE_H
#define SHOAL_KERNEL_TABLE_H

#include "CShoalKernels.h"

struct shoal_kernel_table {
    const char *name;
    int level;
    void (*gemv)(int, const void *, size_t, const float *, float *, size_t, size_t);
    void (*gemm)(int, const void *, size_t, const float *, size_t, size_t, float *, size_t,
                 size_t, size_t);
    void (*dequantize)(int, const void *, size_t, float *);
    float (*dot_f32)(const float *, const float *, size_t);
    void (*axpy_f32)(float *, float, const float *, size_t);
    void (*attend_f32)(const float *, size_t, size_t, const float *, const float *, size_t,
                       size_t, size_t, float, float *, float *);
    void (*swiglu_f32)(float *, const float *, size_t);
    float (*read_sum_f32)(const float *, size_t);
};

extern const struct shoal_kernel_table shoal_kernels_generic;
#if defined(__x86_64__)
extern const struct shoal_kernel_table shoal_kernels_avx2;
extern const struct shoal_kernel_table shoal_kernels_avx512;
#endif

#endif
