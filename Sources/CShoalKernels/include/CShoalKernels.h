// Shoal's CPU kernels: float32 arithmetic over f32, bf16 or block-quantized (ggml Q8_0, Q4_0,
// Q4_K, Q5_K, Q6_K) weights, one implementation per instruction set (AVX-512, AVX2+FMA,
// portable baseline) chosen once at run time by CPUID. Weights are widened or dequantized
// inside the kernels, a vector at a time; inputs, outputs and accumulation are always float32,
// so a quantized matrix computes exactly the function of its dequantized weights.
#ifndef C_SHOAL_KERNELS_H
#define C_SHOAL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Instruction-set levels, lowest first.
enum {
    SHOAL_ISA_GENERIC = 0,
    SHOAL_ISA_AVX2 = 1,
    SHOAL_ISA_AVX512 = 2,
};

/// Weight storage types (`shoal_gemv`, `shoal_gemm`, `shoal_dequantize`). The block types are
/// ggml's (`ggml-common.h`): Q8_0 34 bytes / 32 weights, Q4_0 18 / 32, Q4_1 20 / 32,
/// Q5_0 22 / 32, Q5_1 24 / 32, Q2_K 84 / 256, Q3_K 110 / 256, Q4_K 144 / 256, Q5_K 176 / 256,
/// Q6_K 210 / 256; rows hold whole blocks.
enum {
    SHOAL_W_F32 = 0,
    SHOAL_W_BF16 = 1,
    SHOAL_W_Q8_0 = 2,
    SHOAL_W_Q4_0 = 3,
    SHOAL_W_Q4_K = 4,
    SHOAL_W_Q5_K = 5,
    SHOAL_W_Q6_K = 6,
    SHOAL_W_Q4_1 = 7,
    SHOAL_W_Q5_0 = 8,
    SHOAL_W_Q5_1 = 9,
    SHOAL_W_Q2_K = 10,
    SHOAL_W_Q3_K = 11,
};

/// Rows a kernel call should start on a multiple of (counting from row 0) for full tiles.
#define SHOAL_ROW_TILE 8

/// Name of the instruction set in use: "avx512", "avx2" or "generic".
const char *shoal_kernels_isa(void);

/// Level of the instruction set in use (SHOAL_ISA_*).
int shoal_kernels_isa_level(void);

/// Highest level this CPU (and OS) supports.
int shoal_kernels_best_isa(void);

/// Uses `level` (clamped to what the CPU supports) from now on; returns the level chosen.
/// For tests: switching while kernels run on other threads is safe but mixes levels.
int shoal_kernels_force_isa(int level);

/// Uses `level` (clamped) on the calling thread only, or the process's choice again when
/// `level` is negative; returns the level in force. `ComputePool` carries a caller's thread
/// level to the threads that work for it, so tests can compare ISAs side by side with other work.
int shoal_kernels_set_thread_isa(int level);

/// The calling thread's forced level, or -1.
int shoal_kernels_thread_isa(void);

/// y[r] = W[r,:] · x for r in [r0, r1); W is row-major [rows, cols] of weight type `wt`
/// (SHOAL_W_*); for block types `cols` is a multiple of the block's weights.
void shoal_gemv(int wt, const void *w, size_t cols, const float *x, float *y, size_t r0,
                size_t r1);

/// Y[t*ldy + r] = W[r,:] · X[t*ldx + 0..<cols] for r in [r0, r1), t in [0, n); W of type `wt`.
/// Each token's result is bit-identical to `shoal_gemv` on that token alone.
void shoal_gemm(int wt, const void *w, size_t cols, const float *x, size_t ldx, size_t n,
                float *y, size_t ldy, size_t r0, size_t r1);

/// out[0..<n] = the first n weights at `w` (a row start) as float32, bit-identical to what the
/// kernels multiply by. For block types n is a multiple of the block's weights.
void shoal_dequantize(int wt, const void *w, size_t n, float *out);

/// a · b over n floats.
float shoal_dot_f32(const float *a, const float *b, size_t n);

/// y += alpha * x over n floats.
void shoal_axpy_f32(float *y, float alpha, const float *x, size_t n);

/// Causal attention of G query heads (q: G x hd) sharing one key/value head at one query
/// position: out[g*hd + i] = Σ_j p_gj · values[j*stride + i] over j in [lo, hi), where p_g is
/// the softmax over j of scale · (q_g · keys[j*stride ..< j*stride + hd]). `scores` is scratch
/// of G * (hi - lo) floats and holds p on return.
void shoal_attend_f32(const float *q, size_t G, size_t hd, const float *keys,
                      const float *values, size_t stride, size_t lo, size_t hi, float scale,
                      float *scores, float *out);

/// The SwiGLU gate of an expert: a[i] = silu(a[i]) * b[i] = a[i] · sigmoid(a[i]) · b[i] over n
/// floats, with e^-|a| computed a vector at a time (never overflowing).
void shoal_swiglu_f32(float *a, const float *b, size_t n);

/// Sum of n floats read once, front to back: a plain streaming read for bandwidth probes.
float shoal_read_sum_f32(const float *p, size_t n);

/// Tells the CPU this thread is in a spin-wait loop (x86 `pause`), so the sibling
/// hyperthread and the memory system are not starved while it polls.
static inline void shoal_spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#ifdef __cplusplus
}
#endif

#endif
