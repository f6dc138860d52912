// CPU detection and the public entry points: each forwards to the table of the instruction
// set chosen on first use (or forced by a test).
#include <stdatomic.h>

#include "kernel_table.h"

// Null until the first kernel call. Racing first callers compute the same table, and the
// compare-exchange keeps a level a test forced in between.
static _Atomic(const struct shoal_kernel_table *) current;

int shoal_kernels_best_isa(void) {
#if defined(__x86_64__)
    // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return SHOAL_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return SHOAL_ISA_AVX2;
#endif
    return SHOAL_ISA_GENERIC;
}

static const struct shoal_kernel_table *table_for(int level) {
#if defined(__x86_64__)
    if (level >= SHOAL_ISA_AVX512) return &shoal_kernels_avx512;
    if (level >= SHOAL_ISA_AVX2) return &shoal_kernels_avx2;
#endif
    (void)level;
    return &shoal_kernels_generic;
}

// A level forced on one thread (tests compare every ISA while other tests run alongside in
// the same process, so the choice must not leak into their threads); -1: the process default.
static _Thread_local int thread_level = -1;

static inline const struct shoal_kernel_table *table(void) {
    if (__builtin_expect(thread_level >= 0, 0)) return table_for(thread_level);
    const struct shoal_kernel_table *t = atomic_load_explicit(&current, memory_order_acquire);
    if (__builtin_expect(t != NULL, 1)) return t;
    const struct shoal_kernel_table *expected = NULL;
    t = table_for(shoal_kernels_best_isa());
    return atomic_compare_exchange_strong(&current, &expected, t) ? t : expected;
}

const char *shoal_kernels_isa(void) { return table()->name; }

int shoal_kernels_isa_level(void) { return table()->level; }

int shoal_kernels_force_isa(int level) {
    int best = shoal_kernels_best_isa();
    const struct shoal_kernel_table *t = table_for(level < best ? level : best);
    atomic_store_explicit(&current, t, memory_order_release);
    return t->level;
}

int shoal_kernels_thread_isa(void) { return thread_level; }

int shoal_kernels_set_thread_isa(int level) {
    if (level < 0) return thread_level = -1;
    int best = shoal_kernels_best_isa();
    return thread_level = table_for(level < best ? level : best)->level;
}

void shoal_gemv(int wt, const void *w, size_t cols, const float *x, float *y, size_t r0,
                size_t r1) {
    table()->gemv(wt, w, cols, x, y, r0, r1);
}

void shoal_gemm(int wt, const void *w, size_t cols, const float *x, size_t ldx, size_t n,
                float *y, size_t ldy, size_t r0, size_t r1) {
    table()->gemm(wt, w, cols, x, ldx, n, y, ldy, r0, r1);
}

void shoal_dequantize(int wt, const void *w, size_t n, float *out) {
    table()->dequantize(wt, w, n, out);
}

float shoal_dot_f32(const float *a, const float *b, size_t n) {
    return table()->dot_f32(a, b, n);
}

void shoal_axpy_f32(float *y, float alpha, const float *x, size_t n) {
    table()->axpy_f32(y, alpha, x, n);
}

void shoal_attend_f32(const float *q, size_t G, size_t hd, const float *keys,
                      const float *values, size_t stride, size_t lo, size_t hi, float scale,
                      float *scores, float *out) {
    table()->attend_f32(q, G, hd, keys, values, stride, lo, hi, scale, scores, out);
}

void shoal_swiglu_f32(float *a, const float *b, size_t n) { table()->swiglu_f32(a, b, n); }

float shoal_read_sum_f32(const float *p, size_t n) { return table()->read_sum_f32(p, n); }
