// AVX2 + FMA kernels: 8-wide vectors and 16 registers, so a 4-row x 2-token GEMM tile.
#if defined(__x86_64__)
#define SHOAL_VW 8
#define SHOAL_TT 2
#define SHOAL_ATTR __attribute__((target("avx2,fma,f16c")))
#define SHOAL_F16C 1
#define SHOAL_TABLE shoal_kernels_avx2
#define SHOAL_ISA_NAME "avx2"
#define SHOAL_ISA_LEVEL SHOAL_ISA_AVX2
#include "kernel_bodies.h"
#endif
