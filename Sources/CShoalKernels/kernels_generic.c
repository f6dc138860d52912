// Baseline kernels for any CPU: 4-wide vectors (SSE2 on x86_64, NEON on arm64), 4 x 2 tiles.
#define SHOAL_VW 4
#define SHOAL_TT 2
#define SHOAL_ATTR
#define SHOAL_F16C 0
#define SHOAL_TABLE shoal_kernels_generic
#define SHOAL_ISA_NAME "generic"
#define SHOAL_ISA_LEVEL SHOAL_ISA_GENERIC
#include "kernel_bodies.h"
