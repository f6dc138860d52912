// AVX-512 kernels: 16-wide vectors and 32 registers, so a 4-row x 6-token GEMM tile.
#if defined(__x86_64__)
#define SHOAL_VW 16
#define SHOAL_TT 6
#define SHOAL_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
#define SHOAL_F16C 1
#define SHOAL_TABLE shoal_kernels_avx512
#define SHOAL_ISA_NAME "avx512"
#define SHOAL_ISA_LEVEL SHOAL_ISA_AVX512
#include "kernel_bodies.h"
#endif
