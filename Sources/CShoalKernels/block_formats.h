// ggml's block formats (ggml-common.h's block structs; docs/gguf.md), included by
// kernel_bodies.h with its vector types and parameters: how many bytes a block of weights
// takes, and its weights as float32, each computed as ggml's dequantize_row_* computes it.
// The faster paths at the end compute the same values, so every kernel over quantized weights
// equals the float32 kernel over the dequantized ones, bit for bit (QuantizedKernelTests).

// IEEE binary16 -> float32, exactly: the 15 magnitude bits moved into float32's places read as
// a float 2^112 too small, normal and subnormal halves alike, and one multiply by a power of
// two rescales them without rounding; Inf and NaN keep an all-ones exponent.
INLINE float half_to_float(uint16_t h) {
#if SHOAL_F16C
    return _cvtsh_ss(h);  // F16C, exact
#endif
    uint32_t bits = (uint32_t)(h & 0x7fff) << 13;
    float f;
    if ((h & 0x7c00) == 0x7c00) {
        bits |= 0x7f800000;
        __builtin_memcpy(&f, &bits, sizeof f);
    } else {
        __builtin_memcpy(&f, &bits, sizeof f);
        f *= 0x1p112f;
        __builtin_memcpy(&bits, &f, sizeof f);
    }
    bits |= (uint32_t)(h & 0x8000) << 16;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}

// Weights per block and bytes per block of each weight type (ggml-common.h's block structs).
INLINE size_t block_weights(int wt) {
    switch (wt) {
    case SHOAL_W_F32:
    case SHOAL_W_BF16: return 1;
    case SHOAL_W_Q8_0:
    case SHOAL_W_Q4_0:
    case SHOAL_W_Q4_1:
    case SHOAL_W_Q5_0:
    case SHOAL_W_Q5_1: return 32;
    default: return 256;  // the K-quants
    }
}
INLINE size_t block_bytes(int wt) {
    switch (wt) {
    case SHOAL_W_F32: return 4;
    case SHOAL_W_BF16: return 2;
    case SHOAL_W_Q8_0: return 34;
    case SHOAL_W_Q4_0: return 18;
    case SHOAL_W_Q4_1: return 20;
    case SHOAL_W_Q5_0: return 22;
    case SHOAL_W_Q5_1: return 24;
    case SHOAL_W_Q2_K: return 84;
    case SHOAL_W_Q3_K: return 110;
    case SHOAL_W_Q4_K: return 144;
    case SHOAL_W_Q5_K: return 176;
    default: return 210;  // Q6_K
    }
}
// Bytes of the first n weights of a row (n a whole number of blocks; for the float types,
// any n).
INLINE size_t wbytes(int wt, size_t n) { return n / block_weights(wt) * block_bytes(wt); }

// A block's multipliers, decoded once per block: Q8_0 / Q4_0 / Q5_0 a[0] = d; Q4_1 / Q5_1
// a[0] = d, a[1] = m; Q4_K / Q5_K per 32-weight sub-block j, a[j] = d·scale_j and a[8 + j] =
// dmin·min_j; Q2_K per 16-weight sub-block j, a[j] = d·scale_j and a[16 + j] = dmin·min_j;
// Q3_K and Q6_K per 16-weight sub-block j, a[j] = d·scale_j (Q3_K's scale_j is its 6-bit value
// − 32). Each product is the float32 ggml's dequantize_row_* forms first. Every product in a
// weight is exact in float32, since d is a binary16 (11 significant bits): times a scale and a
// quant it needs at most 24 bits (the most: Q6_K, 11 + 7 + 5 bits for d, its int8 scale and q − 32).
// So the only rounding in a weight is the addition of m (Q4_1, Q5_1) or the subtraction of
// dmin·min (Q2_K, Q4_K, Q5_K), and a product contracted into it (an FMA) gives the same bits.
typedef struct { float a[32]; } block_head;

INLINE void decode_head(int wt, const uint8_t *b, block_head *h) {
#pragma clang fp contract(off)
    switch (wt) {
    case SHOAL_W_Q8_0:
    case SHOAL_W_Q4_0:
    case SHOAL_W_Q5_0:
        h->a[0] = half_to_float(load_u16(b));
        break;
    case SHOAL_W_Q4_1:
    case SHOAL_W_Q5_1:
        h->a[0] = half_to_float(load_u16(b));
        h->a[1] = half_to_float(load_u16(b + 2));
        break;
    case SHOAL_W_Q2_K: {  // scales[16] (scale j in the low nibble, min j in the high), qs[64], d, dmin
        typedef uint8_t u8x16 __attribute__((ext_vector_type(16)));
        typedef float f16v __attribute__((ext_vector_type(16)));
        u8x16 sc;
        __builtin_memcpy(&sc, b, sizeof sc);
        f16v a = __builtin_convertvector(sc & 15, f16v) * half_to_float(load_u16(b + 80));
        f16v m = __builtin_convertvector(sc >> 4, f16v) * half_to_float(load_u16(b + 82));
        __builtin_memcpy(h->a, &a, sizeof a);
        __builtin_memcpy(h->a + 16, &m, sizeof m);
        break;
    }
    case SHOAL_W_Q3_K: {  // hmask[32], qs[64], scales[12], d
        // 16 six-bit scales: the low 4 bits of scale j are the low (j < 8) or high (j >= 8)
        // nibble of byte j % 8, its top 2 bits are bits 2·(j / 4) of byte 8 + j % 4. Unpacked
        // 4 bytes at a time, as ggml's kmask1/kmask2 steps do: a 32-bit shift moves the wanted
        // bits of all four bytes together, and the mask drops what spilled from the next byte.
        typedef uint32_t u32x4 __attribute__((ext_vector_type(4)));
        typedef int8_t i8x16 __attribute__((ext_vector_type(16)));
        typedef float f16v __attribute__((ext_vector_type(16)));
        uint32_t word[3];
        __builtin_memcpy(word, b + 96, 12);
        const u32x4 low = (u32x4){word[0], word[1], word[0] >> 4, word[1] >> 4} & 0x0F0F0F0F;
        const u32x4 top = ((u32x4)word[2] >> (u32x4){0, 2, 4, 6}) & 0x03030303;
        i8x16 scale = (i8x16)(low | top << 4) - 32;
        f16v a = __builtin_convertvector(scale, f16v) * half_to_float(load_u16(b + 108));
        __builtin_memcpy(h->a, &a, sizeof a);
        break;
    }
    case SHOAL_W_Q4_K:
    case SHOAL_W_Q5_K: {
        // ggml's get_scale_min_k4 for all 8 sub-blocks at once: j < 4 takes q[j] & 63 and q[j+4] & 63;
        // j >= 4 the nibbles of q[j+4] with the top two bits of q[j-4] and q[j].
        typedef uint8_t u8x16 __attribute__((ext_vector_type(16)));
        typedef uint8_t u8x8 __attribute__((ext_vector_type(8)));
        typedef float f8 __attribute__((ext_vector_type(8)));
        u8x16 q = 0;
        __builtin_memcpy(&q, b + 4, 12);
        const u8x8 first = {0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0};
        u8x8 sc_low = SHUFFLE(q, q, 0, 1, 2, 3, 8, 9, 10, 11), m_low = SHUFFLE(q, q, 4, 5, 6, 7, 8, 9, 10, 11);
        u8x8 sc_top = (SHUFFLE(q, q, 0, 1, 2, 3, 0, 1, 2, 3) >> 6) << 4, m_top = (SHUFFLE(q, q, 0, 1, 2, 3, 4, 5, 6, 7) >> 6) << 4;
        u8x8 sc = ((sc_low & 63) & first) | (((sc_low & 0xF) | sc_top) & ~first);
        u8x8 m = ((m_low & 63) & first) | (((m_low >> 4) | m_top) & ~first);
        f8 a = __builtin_convertvector(sc, f8) * half_to_float(load_u16(b));
        f8 mins = __builtin_convertvector(m, f8) * half_to_float(load_u16(b + 2));
        __builtin_memcpy(h->a, &a, sizeof a);
        __builtin_memcpy(h->a + 8, &mins, sizeof mins);
        break;
    }
    default: {  // Q6_K: d is last
        typedef int8_t i8x16 __attribute__((ext_vector_type(16)));
        typedef float f16v __attribute__((ext_vector_type(16)));
        i8x16 sc;
        __builtin_memcpy(&sc, b + 192, sizeof sc);
        f16v a = half_to_float(load_u16(b + 208)) * __builtin_convertvector(sc, f16v);
        __builtin_memcpy(h->a, &a, sizeof a);
    }
    }
}

// Weights o ..< o + VW of a block (o a multiple of VW; a constant where the caller unrolls),
// computed as ggml's dequantize_row_* computes them, in the same order, with contraction off:
// an FMA here would round differently from the dequantized weights the references use.
INLINE vf block_vec(int wt, const uint8_t *b, size_t o, const block_head *h) {
#pragma clang fp contract(off)
    switch (wt) {
    case SHOAL_W_Q8_0: {  // d, int8 qs[32]
        vsb q;
        __builtin_memcpy(&q, b + 2 + o, sizeof q);
        return __builtin_convertvector(q, vf) * h->a[0];
    }
    case SHOAL_W_Q4_0: {  // d, qs[16]: weight j the low nibble of qs[j], j + 16 its high nibble
        vb q = load_bytes(b + 2 + (o & 15));
        vb nibble = o < 16 ? q & 15 : q >> 4;
        return (__builtin_convertvector(nibble, vf) - 8.0f) * h->a[0];
    }
    case SHOAL_W_Q4_1: {  // d, m, qs[16]: as Q4_0, weight d·q + m
        vb q = load_bytes(b + 4 + (o & 15));
        vb nibble = o < 16 ? q & 15 : q >> 4;
        return __builtin_convertvector(nibble, vf) * h->a[0] + h->a[1];
    }
    case SHOAL_W_Q5_0:    // d, qh (32 bits: bit j is weight j's fifth bit), qs[16] as Q4_0's
    case SHOAL_W_Q5_1: {  // d, m, qh, qs[16]; weight d·q + m
        const size_t at = wt == SHOAL_W_Q5_0 ? 2 : 4;
        vb q = load_bytes(b + at + 4 + (o & 15));
        vb nibble = o < 16 ? q & 15 : q >> 4;
        vu lane;
        UNROLL for (int i = 0; i < VW; i++) lane[i] = (uint32_t)(o + i);
        vu fifth = ((vu)load_u32(b + at) >> lane) & 1;
        vi value = __builtin_convertvector(nibble, vi) | (vi)(fifth << 4);
        if (wt == SHOAL_W_Q5_0) return __builtin_convertvector(value - 16, vf) * h->a[0];
        return __builtin_convertvector(value, vf) * h->a[0] + h->a[1];
    }
    case SHOAL_W_Q2_K: {  // scales[16], qs[64], d, dmin; two halves of 128, four 2-bit planes each
        const size_t half = o / 128, plane = (o % 128) / 32, l = o % 32, s = 8 * half + 2 * plane + l / 16;
        vb q = (load_bytes(b + 16 + 32 * half + l) >> (uint8_t)(2 * plane)) & 3;
        return h->a[s] * __builtin_convertvector(q, vf) - h->a[16 + s];
    }
    case SHOAL_W_Q3_K: {  // hmask[32], qs[64], scales[12], d; as Q2_K's planes, minus 4 where
                          // bit 4·half + plane of hmask[l] is clear
        const size_t half = o / 128, plane = (o % 128) / 32, l = o % 32, s = 8 * half + 2 * plane + l / 16;
        vb q = (load_bytes(b + 32 + 32 * half + l) >> (uint8_t)(2 * plane)) & 3;
        vb high = (load_bytes(b + l) >> (uint8_t)(4 * half + plane)) & 1;
        vi value = __builtin_convertvector(q, vi) - (vi)(4 * (1 - __builtin_convertvector(high, vi)));
        return h->a[s] * __builtin_convertvector(value, vf);
    }
    case SHOAL_W_Q4_K: {  // d, dmin, scales[12], qs[128]: chunk o/64's low nibbles, then its high ones
        const size_t s = o / 32;
        vb q = load_bytes(b + 16 + 32 * (o / 64) + o % 32);
        vb nibble = (s & 1) ? q >> 4 : q & 15;
        return h->a[s] * __builtin_convertvector(nibble, vf) - h->a[8 + s];
    }
    case SHOAL_W_Q5_K: {  // d, dmin, scales[12], qh[32], qs[128]; bit s of qh[l] is the fifth bit
        const size_t s = o / 32;
        vb q = load_bytes(b + 48 + 32 * (o / 64) + o % 32);
        vb high = load_bytes(b + 16 + o % 32);
        vb nibble = (s & 1) ? q >> 4 : q & 15;
        vb fifth = ((high >> (uint8_t)s) & 1) << 4;
        return h->a[s] * __builtin_convertvector(nibble | fifth, vf) - h->a[8 + s];
    }
    default: {  // Q6_K: ql[128], qh[64], int8 scales[16], d; two halves of 128
        const size_t half = o / 128, quarter = (o % 128) / 32, l = o % 32;
        vb low = load_bytes(b + 64 * half + 32 * (quarter & 1) + l);
        vb high = load_bytes(b + 128 + 32 * half + l);
        vb nibble = quarter >= 2 ? low >> 4 : low & 15;
        vb top = ((high >> (uint8_t)(2 * quarter)) & 3) << 4;
        vf q = __builtin_convertvector(nibble | top, vf) - 32.0f;
        return h->a[8 * half + l / 16 + 2 * quarter] * q;
    }
    }
}

// One Q6_K block of S rows (`step` bytes apart) times T tokens (x + t·ldx) into their
// accumulators (acc[i·T + t]): the 6-bit values of a half (128 weights) are put together 32
// bytes at a time, 32 subtracted as bytes, before each group of VW is widened; each weight is
// then d·scale · (q − 32) as block_vec computes it, multiplied in the same order, so the same
// bits.
INLINE void q6K_block(const uint8_t *w, size_t step, int S, int T, const block_head *head, const float *x,
                      size_t ldx, vf *acc) {
    typedef uint8_t u8x32 __attribute__((ext_vector_type(32)));
    UNROLL for (int half = 0; half < 2; half++) {
        UNROLL for (int i = 0; i < S; i++) {
            const uint8_t *b = w + i * step;
            u8x32 L0, L1, H;
            __builtin_memcpy(&L0, b + 64 * half, 32);
            __builtin_memcpy(&L1, b + 64 * half + 32, 32);
            __builtin_memcpy(&H, b + 128 + 32 * half, 32);
            u8x32 q[4] = {((L0 & 15) | ((H << 4) & 0x30)) - 32, ((L1 & 15) | ((H << 2) & 0x30)) - 32,
                          ((L0 >> 4) | (H & 0x30)) - 32, ((L1 >> 4) | ((H >> 2) & 0x30)) - 32};
            UNROLL for (int quarter = 0; quarter < 4; quarter++) {
                UNROLL for (int part = 0; part < 32 / VW; part++) {
                    vsb v;
                    __builtin_memcpy(&v, (const int8_t *)&q[quarter] + part * VW, sizeof v);
                    const float a = head[i].a[8 * half + part * VW / 16 + 2 * quarter];
                    vf wv = a * __builtin_convertvector(v, vf);  // a product, never fused into the sum below
                    UNROLL for (int t = 0; t < T; t++)
                        acc[i * T + t] += wv * load_f32(x + t * ldx + 128 * half + 32 * quarter + part * VW);
                }
            }
        }
    }
}

#if SHOAL_VW == 16 && defined(__x86_64__)
// q6K_block with AVX-512: a half's 128 six-bit values put together 64 bytes at a time (quarters
// 0 and 1, then 2 and 3: the high bits of both shifted into place by one variable shift), 32
// subtracted as bytes, and stored, so weights k ..< k + 16 of the half are widened straight from
// memory; weight k's multiplier is a[8·half + k/16]. The same values and products as q6K_block,
// in fewer instructions (the GEMV loop: 136 -> 123 per block and row, by objdump): the byte
// work runs on 64 bytes at a time and the widening reads memory, not extracted lanes. Measured
// (the scratch harness, 1024x1024 Q6_K from L2, one thread, best of 3000 products in each of 4
// interleaved runs): 20.5-23.6 -> 24.8-25.5 GB/s. All S rows' values are put together first,
// then each 16 columns of x is loaded once for all of them (as q45K_block_avx512 does): one load
// fewer per row and 16 weights, the same products in the same order (shoal bench-kernels --type
// q6_k --rows 1024 --cols 1024 --threads 1 --matrices 1, from L2, 3 interleaved runs: 1 token
// 23.3-24.3 -> 25.0-25.8 GB/s).
INLINE void q6K_block_avx512(const uint8_t *w, size_t step, int S, int T, const block_head *head, const float *x,
                             size_t ldx, vf *acc) {
    // per 16-bit word: the first 32 bytes (quarter 0 or 2) by one count, the last 32 by another
    const __m512i low_shift = _mm512_mask_blend_epi64(0xF0, _mm512_set1_epi16(4), _mm512_set1_epi16(2));
    const __m512i high_shift = _mm512_mask_blend_epi64(0xF0, _mm512_set1_epi16(0), _mm512_set1_epi16(2));
    const __m512i nibble = _mm512_set1_epi8(15), top = _mm512_set1_epi8(0x30), bias = _mm512_set1_epi8(32);
    UNROLL for (int half = 0; half < 2; half++) {
        int8_t q[GEMV_STREAMS][128];  // each row's values, widened straight from memory
        UNROLL for (int i = 0; i < S; i++) {
            const uint8_t *b = w + i * step;
            __m512i L = _mm512_loadu_si512(b + 64 * half);
            __m512i H = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * half)));
            // quarters 0 | 1: low nibbles, qh bits 0-1 | 2-3 moved to bits 4-5
            __m512i q01 = _mm512_or_si512(_mm512_and_si512(L, nibble), _mm512_and_si512(_mm512_sllv_epi16(H, low_shift), top));
            // quarters 2 | 3: high nibbles, qh bits 4-5 | 6-7 moved to bits 4-5
            __m512i q23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(L, 4), nibble),
                                          _mm512_and_si512(_mm512_srlv_epi16(H, high_shift), top));
            _mm512_storeu_si512(q[i], _mm512_sub_epi8(q01, bias));
            _mm512_storeu_si512(q[i] + 64, _mm512_sub_epi8(q23, bias));
        }
        UNROLL for (int p = 0; p < 8; p++) {
            vf xs = load_f32(x + 128 * half + 16 * p);  // the first token's, for all rows
            UNROLL for (int i = 0; i < S; i++) {
                vf v = (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q[i] + 16 * p))));
                vf wv = head[i].a[8 * half + p] * v;  // a product, never fused into the sum below
                acc[i * T] += wv * xs;
                UNROLL for (int t = 1; t < T; t++) acc[i * T + t] += wv * load_f32(x + t * ldx + 128 * half + 16 * p);
            }
        }
    }
}
#endif

// Makes the compiler store what p points to and read it back from memory afterwards. Decoded
// Q4_K heads left in registers had each multiplier extracted and broadcast by two shuffles
// (vshufps + vshuff64x2), which compete with the table permutes below for the shuffle ports;
// read from memory, each becomes an embedded broadcast operand (vmulps m32{1to16}), no shuffle.
// Measured on Zen 5, the same bits: `shoal bench-kernels --type q4_k --tokens 1 --threads 1
// --matrices 32`, 3 interleaved runs, 11.4 / 12.3 / 14.1 -> 13.1 / 13.7 / 13.5 GB/s (a scratch
// harness on the same shape: 11.4-11.9 -> 14.4-14.7). Q6_K's heads likewise (the harness,
// 1024x1024 from L2, one thread, best of 3000 products in 3 interleaved runs: 21.7 -> 25.1 GB/s).
INLINE void keep_in_memory(const void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

#if SHOAL_VW == 16 && defined(__x86_64__)
// Chunk c (weights 64c ..< 64c + 64) of a Q4_K block as 4 vectors, AVX-512: each sub-block's 16
// possible weights d·scale·q − dmin·min (q = 0...15) are computed once, and the nibbles pick from
// them with one permute (vpermps reads only the low 4 bits of each index). Fewer instructions
// per weight than converting each nibble. Each table is one FMA: d·scale·q is exact (see
// block_head), so rounding it together with the subtraction gives block_vec's weight, bit for
// bit, in one instruction where a multiply and a subtraction took two (a scratch harness,
// 1024x1024 Q4_K from L2, one thread, best of 3000 products, 8 interleaved runs: 24.0-25.1 ->
// 24.8-26.2 GB/s, faster in every run; 1024x3584: 22.8-23.8 -> 23.6-24.9).
INLINE void q4K_chunk_avx512(const uint8_t *b, const block_head *h, int c, vf *out) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 lo = _mm512_fmsub_ps(iota, _mm512_set1_ps(h->a[2 * c]), _mm512_set1_ps(h->a[8 + 2 * c]));
    const __m512 hi = _mm512_fmsub_ps(iota, _mm512_set1_ps(h->a[2 * c + 1]), _mm512_set1_ps(h->a[9 + 2 * c]));
    const uint8_t *q = b + 16 + 32 * c;
    __m512i b0 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
    __m512i b1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)));
    out[0] = (vf)_mm512_permutexvar_ps(b0, lo);
    out[1] = (vf)_mm512_permutexvar_ps(b1, lo);
    out[2] = (vf)_mm512_permutexvar_ps(_mm512_srli_epi32(b0, 4), hi);
    out[3] = (vf)_mm512_permutexvar_ps(_mm512_srli_epi32(b1, 4), hi);
}

// The heads of one Q4_K block in each of 4 rows (`step` bytes apart), decode_head's values for
// all four at once: each row's first 16 bytes (d, dmin, scales[12]) in one 128-bit lane, the
// 6-bit scales and mins unpacked by two in-lane byte shuffles and masks (decode_head's
// get_scale_min_k4 steps), then widened, converted and multiplied by {d x 8, dmin x 8} as
// decode_head multiplies them: the same products, the same bits. With it the GEMV loop takes 87
// instructions per block and row where it took 104 (objdump); it pays once the GEMV walks 8
// runs (see gemv_streams): 22.1 -> 25.6 GB/s there.
INLINE void q4K_heads_x4(const uint8_t *w, size_t step, block_head *head) {
    __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)w));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(w + step)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(w + 2 * step)), 2);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(w + 3 * step)), 3);
    // In a lane, scales byte q[k] is byte 4 + k. Out bytes 0-7: scale j, 8-15: min j.
    // j < 4: scale q[j] & 63, min q[j+4] & 63; j >= 4: scale (q[j+4] & 15) | (q[j-4] >> 6) << 4,
    // min (q[j+4] >> 4) | (q[j] >> 6) << 4.
    const __m512i pick = _mm512_broadcast_i32x4(_mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m512i tops = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 4, 5, 6, 7, 0, 0, 0, 0, 8, 9, 10, 11));
    const __m512i low_mask = _mm512_broadcast_i32x4(_mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
    const __m512i high_mask = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15));
    const __m512i top_mask = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 48, 48, 48, 48, 0, 0, 0, 0, 48, 48, 48, 48));
    __m512i a = _mm512_shuffle_epi8(v, pick), t = _mm512_shuffle_epi8(v, tops);
    __m512i bytes = _mm512_or_si512(_mm512_and_si512(a, low_mask), _mm512_and_si512(_mm512_srli_epi16(a, 4), high_mask));
    bytes = _mm512_or_si512(bytes, _mm512_and_si512(_mm512_srli_epi16(t, 2), top_mask));
    uint8_t unpacked[64];  // widened a lane at a time straight from memory
    _mm512_storeu_si512(unpacked, bytes);
    UNROLL for (int i = 0; i < 4; i++) {
        // words 8i (d) and 8i + 1 (dmin) of v, each 8 times
        const __m512i halves = _mm512_permutexvar_epi16(
            _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8 * i + 1, 8 * i + 1, 8 * i + 1,
                             8 * i + 1, 8 * i + 1, 8 * i + 1, 8 * i + 1, 8 * i + 1, 8 * i, 8 * i, 8 * i, 8 * i,
                             8 * i, 8 * i, 8 * i, 8 * i),
            v);
        __m512 scale = _mm512_cvtph_ps(_mm512_castsi512_si256(halves));
        __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(unpacked + 16 * i))));
        _mm512_storeu_ps(head[i].a, _mm512_mul_ps(q, scale));
    }
}

// Chunk c (weights 64c ..< 64c + 64) of a Q5_K block as 4 vectors, AVX-512, with tables as
// Q4_K's: sub-block s's 32 possible weights d·scale·q − dmin·min (q = 0...31) are two tables,
// q < 16 and q >= 16, each one FMA (the product is exact, so one rounding: block_vec's bits),
// and vpermt2ps picks from them by 5 index bits: the nibble in bits 0-3 and the fifth bit, bit
// s of qh[l], shifted from the block's qh bytes 0-15 and 16-31 (widened to 32 bits for each
// chunk) to bit 4. Bits above 4, the other nibble's and qh's, are ignored by the permute.
INLINE void q5K_chunk_avx512(const uint8_t *b, const block_head *h, int c, vf *out) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i qh[2] = {_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 16))),
                           _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 32)))};
    const __m512 iota16 = _mm512_add_ps(iota, _mm512_set1_ps(16));
    const __m512i nibble = _mm512_set1_epi32(15);
    const uint8_t *q = b + 48 + 32 * c;
    const __m512i bytes[2] = {_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q)),
                              _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + 16)))};
    UNROLL for (int half = 0; half < 2; half++) {  // sub-block 2c: low nibbles; 2c + 1: high
        const int s = 2 * c + half;
        const __m512 d = _mm512_set1_ps(h->a[s]), m = _mm512_set1_ps(h->a[8 + s]);
        const __m512 low = _mm512_fmsub_ps(iota, d, m), high = _mm512_fmsub_ps(iota16, d, m);
        UNROLL for (int j = 0; j < 2; j++) {
            const __m512i n = half ? _mm512_srli_epi32(bytes[j], 4) : bytes[j];
            const __m512i fifth = s <= 4 ? _mm512_slli_epi32(qh[j], 4 - s) : _mm512_srli_epi32(qh[j], s - 4);
            const __m512i index = _mm512_or_si512(_mm512_and_si512(n, nibble), _mm512_andnot_si512(nibble, fifth));
            out[2 * half + j] = (vf)_mm512_permutex2var_ps(low, index, high);
        }
    }
}

// One Q4_K or Q5_K (wt) block of S rows (`step` bytes apart) times T tokens (x + t·ldx) into
// their accumulators (acc[i·T + t]), 64 weights of each row at a time. Q5_K's qh is widened for
// each chunk, which is as fast at 1 token as holding it for the whole block (2 registers a row,
// 8 for 4 rows) and measured faster at 4 (bench-kernels --type q5_k --tokens 4, 3 rounds:
// 145-148 µs against 155-168, a gap near this host's noise).
INLINE void q45K_block_avx512(int wt, const uint8_t *w, size_t step, int S, int T, const block_head *head,
                              const float *x, size_t ldx, vf *acc) {
    UNROLL for (int c = 0; c < 4; c++) {
        const vf xs[4] = {load_f32(x + 64 * c), load_f32(x + 64 * c + 16), load_f32(x + 64 * c + 32),
                          load_f32(x + 64 * c + 48)};
        UNROLL for (int i = 0; i < S; i++) {
            vf wv[4];
            if (wt == SHOAL_W_Q4_K) q4K_chunk_avx512(w + i * step, &head[i], c, wv);
            else q5K_chunk_avx512(w + i * step, &head[i], c, wv);
            UNROLL for (int j = 0; j < 4; j++) acc[i * T] += wv[j] * xs[j];
            UNROLL for (int t = 1; t < T; t++)
                UNROLL for (int j = 0; j < 4; j++) acc[i * T + t] += wv[j] * load_f32(x + t * ldx + 64 * c + 16 * j);
        }
    }
}
#endif

#if SHOAL_VW == 16 && defined(__x86_64__)
// Q2_K or Q3_K (wt) blocks of S rows (`step` bytes apart) times T tokens (x + t·ldx) into their
// accumulators (acc[i·T + t]), AVX-512, as q45K_block_avx512 does Q4_K: each 16-weight
// sub-block's possible weights are computed once as a table and the weights' bits pick from it
// (vpermps reads the low 4 bits of each index). Q2_K's table holds d·scale·q − dmin·min for
// q = i & 3 (one FMA: the product is exact, so one rounding, block_vec's bits); a weight's 2
// bits are shifted to the bottom of its byte widened to 32 bits, and the plane above lands in
// index bits 2-3, which the table ignores. Q3_K's holds d·scale·(q − 4 + 4·high) for q | high
// << 2 = i & 7 (an exact product, as block_vec's), the high bit moved from hmask to index bit
// 2. Each row's bytes are widened once per half and shifted per plane; the weights are taken
// in column order, so every sum rounds as the float kernel's does.
INLINE void planes_block_avx512(int wt, const uint8_t *w, size_t step, int S, int T, const block_head *head,
                                const float *x, size_t ldx, vf *acc) {
    const int three = wt == SHOAL_W_Q3_K;
    const __m512 levels = three ? _mm512_setr_ps(-4, -3, -2, -1, 0, 1, 2, 3, -4, -3, -2, -1, 0, 1, 2, 3)
                                : _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    const __m512i low = _mm512_set1_epi32(3);
    const size_t planes = three ? 32 : 16;  // where qs starts
    __m512i high[GEMV_STREAMS][2];  // Q3_K: hmask bytes 0-15 and 16-31 of each row, widened
    if (three)
        UNROLL for (int i = 0; i < S; i++)
            UNROLL for (int c = 0; c < 2; c++)
                high[i][c] = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(w + i * step + 16 * c)));
    UNROLL for (int half = 0; half < 2; half++) {
        __m512i q[GEMV_STREAMS][2];  // qs bytes 32·half + 0-15 and 16-31 of each row, widened
        UNROLL for (int i = 0; i < S; i++)
            UNROLL for (int c = 0; c < 2; c++)
                q[i][c] = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128((const __m128i *)(w + i * step + planes + 32 * half + 16 * c)));
        UNROLL for (int plane = 0; plane < 4; plane++) {
            const int bit = 4 * half + plane;  // Q3_K: of hmask, moved to index bit 2
            UNROLL for (int c = 0; c < 2; c++) {
                const int sub = 8 * half + 2 * plane + c, col = 128 * half + 32 * plane + 16 * c;
                vf xs = load_f32(x + col);  // the first token's, for all rows
                UNROLL for (int i = 0; i < S; i++) {
                    __m512i index = _mm512_srli_epi32(q[i][c], 2 * plane);
                    __m512 table;
                    if (three) {
                        __m512i h = bit >= 2 ? _mm512_srli_epi32(high[i][c], bit - 2)
                                             : _mm512_slli_epi32(high[i][c], 2 - bit);
                        index = _mm512_or_si512(_mm512_and_si512(index, low), _mm512_andnot_si512(low, h));
                        table = _mm512_mul_ps(levels, _mm512_set1_ps(head[i].a[sub]));
                    } else {
                        table = _mm512_fmsub_ps(levels, _mm512_set1_ps(head[i].a[sub]), _mm512_set1_ps(head[i].a[16 + sub]));
                    }
                    vf wv = (vf)_mm512_permutexvar_ps(index, table);
                    acc[i * T] += wv * xs;
                    UNROLL for (int t = 1; t < T; t++) acc[i * T + t] += wv * load_f32(x + t * ldx + col);
                }
            }
        }
    }
}
#endif

#if SHOAL_VW == 16 && defined(__x86_64__)
// Q4_0, Q4_1, Q5_0 or Q5_1 (wt) blocks of S rows (`step` bytes apart) times T tokens into
// their accumulators, AVX-512, with tables as Q4_K's: a block's 16 (4-bit) or 32 (5-bit)
// possible weights are computed once per row, d·(q − 8) or d·(q − 16) by one exact multiply,
// d·q + m by one FMA (the product is exact, so one rounding: block_vec's bits), and the bytes,
// widened to 32 bits, pick from them: vpermps reads the low 4 bits of each index (the high
// nibble is shifted down), vpermt2ps 5 bits from two tables, the fifth bits set from qh by a
// mask. Weights 0-15 before 16-31, as the float kernel sums them.
INLINE void legacy_block_avx512(int wt, const uint8_t *w, size_t step, int S, int T, const block_head *head,
                                const float *x, size_t ldx, vf *acc) {
    const int five = wt == SHOAL_W_Q5_0 || wt == SHOAL_W_Q5_1, offset = wt == SHOAL_W_Q4_1 || wt == SHOAL_W_Q5_1;
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // where qs starts: after d (Q4_0), d and m (Q4_1), d and qh (Q5_0), d, m and qh (Q5_1)
    const size_t qs = wt == SHOAL_W_Q4_0 ? 2 : wt == SHOAL_W_Q4_1 ? 4 : wt == SHOAL_W_Q5_0 ? 6 : 8;
    const vf xs[2] = {load_f32(x), load_f32(x + 16)};  // the first token's, for all rows
    UNROLL for (int i = 0; i < S; i++) {
        const uint8_t *b = w + i * step;
        const __m512 d = _mm512_set1_ps(head[i].a[0]);
        __m512 low, high;  // the weights of q = 0-15 and, for 5 bits, 16-31
        if (offset) {
            low = _mm512_fmadd_ps(iota, d, _mm512_set1_ps(head[i].a[1]));
            high = _mm512_fmadd_ps(_mm512_add_ps(iota, _mm512_set1_ps(16)), d, _mm512_set1_ps(head[i].a[1]));
        } else {
            const float centre = five ? 16 : 8;
            low = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(centre)), d);
            high = _mm512_mul_ps(_mm512_add_ps(iota, _mm512_set1_ps(16 - centre)), d);
        }
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + qs)));
        __m512i index[2] = {q, _mm512_srli_epi32(q, 4)};
        vf wv[2];
        if (five) {
            const uint32_t qh = load_u32(b + qs - 4);
            const __m512i fifth = _mm512_set1_epi32(16);
            UNROLL for (int c = 0; c < 2; c++) {
                index[c] = _mm512_mask_or_epi32(_mm512_and_si512(index[c], _mm512_set1_epi32(15)),
                                                (__mmask16)(qh >> (16 * c)), index[c], fifth);
                wv[c] = (vf)_mm512_permutex2var_ps(low, index[c], high);
            }
        } else {
            UNROLL for (int c = 0; c < 2; c++) wv[c] = (vf)_mm512_permutexvar_ps(index[c], low);
        }
        UNROLL for (int c = 0; c < 2; c++) {
            acc[i * T] += wv[c] * xs[c];
            UNROLL for (int t = 1; t < T; t++) acc[i * T + t] += wv[c] * load_f32(x + t * ldx + 16 * c);
        }
    }
}
#endif

// out[0 ..< kc] = weights k0 ..< k0 + kc of the block-format row starting at `row` (k0 and kc
// whole blocks), each block's head decoded once: the values block_vec gives.
INLINE void dequantize_span(const uint8_t *row, int wt, size_t k0, size_t kc, float *out) {
    const size_t qk = block_weights(wt), bb = block_bytes(wt);
    for (size_t k = k0; k < k0 + kc; k += qk) {
        const uint8_t *b = row + k / qk * bb;
        block_head h;
        decode_head(wt, b, &h);
        if (wt == SHOAL_W_Q4_K || wt == SHOAL_W_Q5_K) keep_in_memory(&h);
        float *o = out + (k - k0);
#if SHOAL_VW == 16 && defined(__x86_64__)
        if (wt == SHOAL_W_Q4_K || wt == SHOAL_W_Q5_K) {
            UNROLL for (int c = 0; c < 4; c++) {
                vf wv[4];
                if (wt == SHOAL_W_Q4_K) q4K_chunk_avx512(b, &h, c, wv);
                else q5K_chunk_avx512(b, &h, c, wv);
                UNROLL for (int j = 0; j < 4; j++) store_f32(o + 64 * c + 16 * j, wv[j]);
            }
            continue;
        }
#endif
        UNROLL for (size_t v = 0; v < qk; v += VW) store_f32(o + v, block_vec(wt, b, v, &h));
    }
}
