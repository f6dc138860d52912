// Every kernel, written once over clang vector extensions and compiled once per instruction
// set: kernels_<isa>.c defines the parameters below and includes this file.
//
//   SHOAL_VW         floats per vector register (16 AVX-512, 8 AVX2, 4 baseline)
//   SHOAL_TT         tokens per GEMM register tile (of RT = 4 rows)
//   SHOAL_ATTR       the function attribute selecting the instruction set, or nothing
//   SHOAL_TABLE      name of the shoal_kernel_table this instantiation exports
//   SHOAL_F16C       1 where SHOAL_ATTR enables F16C (binary16 conversions in one instruction)
//   SHOAL_ISA_NAME, SHOAL_ISA_LEVEL
#include <math.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernel_table.h"

typedef float vf __attribute__((ext_vector_type(SHOAL_VW)));
typedef uint16_t vh __attribute__((ext_vector_type(SHOAL_VW)));
typedef uint32_t vu __attribute__((ext_vector_type(SHOAL_VW)));
typedef int32_t vi __attribute__((ext_vector_type(SHOAL_VW)));
typedef uint8_t vb __attribute__((ext_vector_type(SHOAL_VW)));
typedef int8_t vsb __attribute__((ext_vector_type(SHOAL_VW)));
typedef float v8 __attribute__((ext_vector_type(8)));
typedef float v4 __attribute__((ext_vector_type(4)));
typedef float v2 __attribute__((ext_vector_type(2)));

#define VW SHOAL_VW
#define RT 4  // rows of a GEMM register tile
#define INLINE static inline __attribute__((always_inline)) SHOAL_ATTR
#define UNROLL _Pragma("clang loop unroll(full)")
#define SHUFFLE __builtin_shufflevector

// GEMV splits its rows into GEMV_STREAMS equal runs and walks them side by side, one row of each
// at a time: every run is read in storage order, one sequential stream the hardware prefetcher
// follows, and each row has its own FMA chain. Measured on Zen 4 (a scratch harness timing the
// variants side by side, not kept; bf16, 16 matrices from DRAM, median GB/s; a plain read of
// the same bytes for scale; `shoal bench-kernels --tokens 1` times the kernel kept):
//   - 8 neighbouring rows at a time (8 streams 2 KB apart, with or without software prefetch)
//     reached half of a plain read: 3584x1024 one thread 12.6 vs 25.0;
//   - one row at a time (one stream, one chain): 26.5 there, but a long row is bound by the
//     chain (one FMA latency per VW columns): 1024x3584 one thread 12.9 vs 21.6 read;
//   - four runs: 1024x3584 17.6 one thread, 26.3 vs 30.7 read on two; 3584x1024 26.8.
// Each run also prefetches GEMV_PREFETCH bytes ahead of itself: decode on mini (shoal bench,
// 64-token prompt, 4 interleaved pairs) went from 62.0-66.2 to 67.6-80.9 tokens/s; 128 and 512
// bytes ahead did no better than 256.
// A row's FMAs form one chain (each waits ~4 cycles for the previous one's sum), so the runs
// side by side are also the chains in flight. A Q4_K block of 4 rows is ~350 instructions with
// AVX-512, about as many as the core holds in flight, and each row's 16 FMAs in it take 64
// cycles one after another: the next block's work could not hide them. With AVX-512 a Q4_K GEMV
// walks 8 runs (a scratch harness, 1024x1024 Q4_K from L2, one thread at ~4.1 GHz, best of 3000
// products over 3 interleaved runs: 21.0 -> 25.6 GB/s; 4 runs with the 4-row heads alone: 22.1).
// Q6_K did no better with 8 (25.5 vs 25.9 GB/s), and the float types and Q8_0 are bound by
// memory first.
#define GEMV_STREAMS 8  // the most runs any type walks
INLINE int gemv_streams(int wt) { return SHOAL_VW == 16 && wt == SHOAL_W_Q4_K ? 8 : 4; }
// A block format's GEMV takes up to this many tokens at once (gemv_tokens_body): each block is
// decoded once for all of them.
#define GEMV_TOKENS 4
#define GEMV_PREFETCH 256
// Q6_K fetches further ahead. Its 4 runs take ~180 cycles per block of 4 rows from DRAM, so 256
// bytes (1.2 blocks) ahead is ~55 ns, less than a DRAM access takes; 1024 bytes (~5 blocks) is
// ~200 ns. Measured on Zen 5, the same bits (shoal bench-kernels --type q6_k --tokens 1
// --threads 2 --matrices 32 --repeats 9, interleaved with the previous build, median per-round
// ratio of GB/s): 1.18x and 1.29x in two sittings of 8-10 rounds (2048 bytes: 1.16x). Q4_K (8
// runs, ~1.8 blocks ahead) gained nothing in the same kernel measure (512 and 1024 bytes, 10
// rounds: 1.04x, 1.02x), nor Q8_0 in decode (shoal bench, 8 interleaved rounds), which already
// reads ~95% of the bandwidth. Q5_K (4 runs of 176-byte blocks, its tables as Q4_K's) gains
// as Q6_K did: 3584x1024, 2 threads, 3 interleaved rounds, µs per product 97-105 -> 75-92.
INLINE size_t gemv_blocks_prefetch(int wt) { return wt == SHOAL_W_Q6_K || wt == SHOAL_W_Q5_K ? 1024 : GEMV_PREFETCH; }
// GEMM blocking: an MC x KC block of W (256 KB bf16, 512 KB f32) stays in L2 while every tile
// of SHOAL_TT tokens passes over it, each tile's x slice (SHOAL_TT x KC f32, 48 KB with
// AVX-512) reused by all MC rows. bf16 is widened in registers as the tile loads it: measured
// as fast as widening a block into an f32 scratch first (faster below ~32 tokens), no scratch.
#define MC 64
#define KC 2048
// Up to this many tokens the GEMM walks W as the GEMV does (gemm_streams).
#define GEMM_STREAM_TOKENS 32
// Up to this many tokens a block format's GEMM is its GEMV over GEMV_TOKENS tokens at a time
// (each block decoded once per GEMV_TOKENS tokens and no float32 scratch) rather than the
// streamed GEMM over a dequantized scratch. Measured on Zen 5 (shoal bench-kernels --threads 2
// --matrices 16, 3584x1024, us per product, streamed -> GEMV over tokens): Q4_K 2 tokens
// 137 -> 76, 4: 166 -> 108, 8: 231 -> 222; Q8_0 2: 311 -> 82, 4: 347 -> 139, 8: 391 -> 266;
// Q6_K 2: 354 -> 173, 4: 349 -> 238, but 6: 355 -> 377 and 8: 403 -> 433, so Q6_K stops at 4.
INLINE size_t gemm_gemv_tokens(int wt) { return wt == SHOAL_W_Q6_K ? 4 : 8; }
// What a GEMM tile prefetches while it computes. The blocked kernel fetches nothing: its block
// of W is in L2 already, and fetching the next tile's rows (as it did, measured on Zen 4 when it
// also ran 2-8 tokens) only took load slots from the tile: on Zen 5 (shoal bench-kernels --tokens
// 120 --threads 1 --matrices 2, 2 interleaved runs, GFLOP/s) Q4_K 3584x1024 152-161 -> 206-214,
// 1024x3584 164-172 -> 187-194, f32 3584x1024 136-143 -> 169-187, bf16 unchanged (~200).
// The streamed walk fetches its own rows twice, GEMV_PREFETCH bytes ahead into L1 as the
// GEMV does and GEMM_PREFETCH_L2 bytes ahead into L2 (one token tile per row set does so: the
// others find the rows in L1). A few tokens take longer per byte than a GEMV, so the L1 fetch
// alone does not keep the DRAM busy. Measured on Zen 4 (shoal bench-kernels --matrices 16,
// 3584x1024 bf16, one thread, 3 interleaved runs, us per product; the first column is from an
// earlier set of runs):
//   tokens   no prefetch   L1 256 B    + L2 2 KB   (+ L2 4 KB instead)
//   2        434-501       314-382     349-375     (320-335)
//   4        637-648       524-549     411-430     (392-399)
//   8        827-867       759-793     635-648     (693-722)
//   16       1353-1427     1291-1330   1178-1189   (1244-1327)
// The GEMV gains nothing from the L2 fetch (1 token: 304-371 without, 349-407 with).
#define GEMM_PREFETCH_L2 2048
enum { PREFETCH_NONE, PREFETCH_AHEAD };

// ---- loads: widening and dequantizing weights ---------------------------------------------

// memcpy loads are unaligned: rows of a matrix with odd cols start anywhere.
INLINE vf load_f32(const float *p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
INLINE void store_f32(float *p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
INLINE uint16_t load_u16(const uint8_t *p) { uint16_t v; __builtin_memcpy(&v, p, sizeof v); return v; }
INLINE uint32_t load_u32(const uint8_t *p) { uint32_t v; __builtin_memcpy(&v, p, sizeof v); return v; }
INLINE vb load_bytes(const uint8_t *p) { vb v; __builtin_memcpy(&v, p, sizeof v); return v; }

// bf16 is the top half of a float32: zero-extend to 32 bits and shift it into place.
INLINE vf load_bf16(const uint16_t *p) {
    vh h;
    __builtin_memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

// The block formats: binary16, block sizes, each block's head and weights, and the faster
// per-format paths.
#include "block_formats.h"

// The float kernels below (gemv_rows, the GEMM tiles) read f32 or bf16 weights: a block format
// goes through its own GEMV (gemv_rows_blocks) or is dequantized into a float32 scratch first.

// Weights i ..< i + VW of a float matrix; `wt` (SHOAL_W_F32 or _BF16) is a constant after inlining.
INLINE vf load_w(const void *w, size_t i, int wt) {
    return wt == SHOAL_W_BF16 ? load_bf16((const uint16_t *)w + i) : load_f32((const float *)w + i);
}
INLINE float scalar_w(const void *w, size_t i, int wt) {
    if (wt != SHOAL_W_BF16) return ((const float *)w)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}
// Weights between two software prefetches of a streamed float row: one per 64-byte line.
INLINE size_t line_weights(int wt) { return wt == SHOAL_W_BF16 ? 32 : 16; }

// ---- reductions ----------------------------------------------------------------------------

INLINE v4 fold4(vf v) {
#if SHOAL_VW == 16
    v8 h = v.lo + v.hi;
    return h.lo + h.hi;
#elif SHOAL_VW == 8
    return v.lo + v.hi;
#else
    return v;
#endif
}

INLINE float hsum(vf v) {
    v4 q = fold4(v);
    v2 d = q.lo + q.hi;
    return d.x + d.y;
}

// {Σa, Σb, Σc, Σd}: a 4x4 transpose-and-add shares shuffles across the four sums.
INLINE v4 hsum4(vf a, vf b, vf c, vf d) {
    v4 a4 = fold4(a), b4 = fold4(b), c4 = fold4(c), d4 = fold4(d);
    // ab = {a0+a2, b0+b2, a1+a3, b1+b3}, cd likewise; then fold ab and cd into each other.
    v4 ab = SHUFFLE(a4, b4, 0, 4, 1, 5) + SHUFFLE(a4, b4, 2, 6, 3, 7);
    v4 cd = SHUFFLE(c4, d4, 0, 4, 1, 5) + SHUFFLE(c4, d4, 2, 6, 3, 7);
    return SHUFFLE(ab, cd, 0, 1, 4, 5) + SHUFFLE(ab, cd, 2, 3, 6, 7);
}

// ---- GEMV: y = W x, bandwidth bound -----------------------------------------------------------

// y[r + i*h] = W[r + i*h, :] · x for i < S, each row in one accumulator, so lane j sums columns
// j, j+VW, j+2VW, ... in order. The sum is taken in KC-column blocks, each reduced and added in
// order exactly as gemm_body does, so a token's result is bit-identical whether it runs alone
// (GEMV) or in a batch (GEMM): a request's output does not depend on what else the server runs.
INLINE void gemv_rows(const void *W, int wt, size_t cols, const float *x, float *y,
                      size_t r, size_t h, int S) {
    const char *w = (const char *)W + wbytes(wt, r * cols);  // W[r, :]
    const size_t step = wbytes(wt, h * cols);  // row r + i*h is i*step bytes further
    float sum[GEMV_STREAMS] = {0};  // stays 0 for an empty row
    for (size_t k0 = 0; k0 < cols; k0 += KC) {
        const size_t end = cols - k0 < KC ? cols : k0 + KC;
        vf acc[GEMV_STREAMS];
        UNROLL for (int i = 0; i < S; i++) acc[i] = 0;
        size_t k = k0;
        for (; k + VW <= end; k += VW) {
            vf xk = load_f32(x + k);
            if (k % line_weights(wt) == 0)
                UNROLL for (int i = 0; i < S; i++) __builtin_prefetch(w + i * step + wbytes(wt, k) + GEMV_PREFETCH, 0, 3);
            UNROLL for (int i = 0; i < S; i++) acc[i] += load_w(w + i * step, k, wt) * xk;
        }
        UNROLL for (int i = 0; i < S; i++) {
            float s = hsum(acc[i]);
            for (size_t c = k; c < end; c++) s += scalar_w(w + i * step, c, wt) * x[c];
            sum[i] = k0 > 0 ? sum[i] + s : s;
        }
    }
    UNROLL for (int i = 0; i < S; i++) y[r + i * h] = sum[i];
}

// gemv_rows for a block format, over T tokens (x + t·ldx into y + t·ldy): each block's head is
// decoded once per row and each vector of weights once for the T tokens, then multiplied in the
// order gemv_rows multiplies them (lane j of row i and token t still sums columns j, j + VW, ...
// in order within each KC block), so the two give the same bits, token by token.
INLINE void gemv_rows_blocks(const void *W, int wt, size_t cols, const float *x, size_t ldx, float *y,
                             size_t ldy, size_t r, size_t h, int S, int T) {
    const size_t qk = block_weights(wt), bb = block_bytes(wt), ahead = gemv_blocks_prefetch(wt);
    const uint8_t *w = (const uint8_t *)W + wbytes(wt, r * cols);
    const size_t step = wbytes(wt, h * cols);
    float sum[GEMV_STREAMS * GEMV_TOKENS] = {0};
    for (size_t k0 = 0; k0 < cols; k0 += KC) {
        const size_t end = cols - k0 < KC ? cols : k0 + KC;
        vf acc[GEMV_STREAMS * GEMV_TOKENS];
        UNROLL for (int i = 0; i < S * T; i++) acc[i] = 0;
        for (size_t k = k0; k < end; k += qk) {
            const size_t offset = k / qk * bb;
            block_head head[GEMV_STREAMS];
            UNROLL for (int i = 0; i < S; i++) {
                __builtin_prefetch(w + i * step + offset + ahead, 0, 3);
                if (bb > 64) __builtin_prefetch(w + i * step + offset + ahead + 64, 0, 3);
                if (bb > 128) __builtin_prefetch(w + i * step + offset + ahead + 128, 0, 3);
                if (bb > 192) __builtin_prefetch(w + i * step + offset + ahead + 192, 0, 3);
            }
#if SHOAL_VW == 16 && defined(__x86_64__)
            if (wt == SHOAL_W_Q4_K && S % 4 == 0)
                UNROLL for (int i = 0; i < S; i += 4) q4K_heads_x4(w + offset + i * step, step, head + i);
            else
#endif
                UNROLL for (int i = 0; i < S; i++) decode_head(wt, w + i * step + offset, &head[i]);
            if (qk == 256) keep_in_memory(head);  // the K-quants' multipliers, read as broadcast operands
            if (wt == SHOAL_W_Q6_K) {
#if SHOAL_VW == 16 && defined(__x86_64__)
                q6K_block_avx512(w + offset, step, S, T, head, x + k, ldx, acc);
#else
                q6K_block(w + offset, step, S, T, head, x + k, ldx, acc);
#endif
                continue;
            }
#if SHOAL_VW == 16 && defined(__x86_64__)
            if (wt == SHOAL_W_Q4_K || wt == SHOAL_W_Q5_K) {
                q45K_block_avx512(wt, w + offset, step, S, T, head, x + k, ldx, acc);
                continue;
            }
            if (wt == SHOAL_W_Q2_K || wt == SHOAL_W_Q3_K) {
                planes_block_avx512(wt, w + offset, step, S, T, head, x + k, ldx, acc);
                continue;
            }
            if (wt == SHOAL_W_Q4_0 || wt == SHOAL_W_Q4_1 || wt == SHOAL_W_Q5_0 || wt == SHOAL_W_Q5_1) {
                legacy_block_avx512(wt, w + offset, step, S, T, head, x + k, ldx, acc);
                continue;
            }
#endif
            UNROLL for (size_t o = 0; o < qk; o += VW) {
                vf xk = load_f32(x + k + o);  // the first token's, for all rows
                UNROLL for (int i = 0; i < S; i++) {
                    vf wv = block_vec(wt, w + i * step + offset, o, &head[i]);
                    acc[i * T] += wv * xk;
                    UNROLL for (int t = 1; t < T; t++) acc[i * T + t] += wv * load_f32(x + t * ldx + k + o);
                }
            }
        }
        UNROLL for (int i = 0; i < S * T; i++) sum[i] = k0 > 0 ? sum[i] + hsum(acc[i]) : hsum(acc[i]);
    }
    UNROLL for (int i = 0; i < S; i++) UNROLL for (int t = 0; t < T; t++) y[r + i * h + t * ldy] = sum[i * T + t];
}

// gemv_rows_blocks with T (1 ..< GEMV_TOKENS) turned into a constant, so each token count gets
// its own fully unrolled walk (S is a constant at every call).
INLINE void gemv_rows_blocks_n(const void *W, int wt, size_t cols, const float *x, size_t ldx, float *y,
                               size_t ldy, size_t r, size_t h, int S, int T) {
#define ROWS(N) gemv_rows_blocks(W, wt, cols, x, ldx, y, ldy, r, h, S, N)
    switch (T) {
    case 1: ROWS(1); break;
    case 2: ROWS(2); break;
    case 3: ROWS(3); break;
    default: ROWS(4); break;
    }
#undef ROWS
}

// T tokens (x + t·ldx into y + t·ldy) of a block format's GEMV over rows r0 ..< r1, T <=
// GEMV_TOKENS: the rows split into runs walked side by side as gemv_body's, the last few alone.
INLINE void gemv_tokens_body(const void *W, int wt, size_t cols, const float *x, size_t ldx, float *y,
                             size_t ldy, int T, size_t r0, size_t r1) {
    const int S = T == 1 ? gemv_streams(wt) : 4;
    const size_t h = (r1 - r0) / S;
    for (size_t r = r0; r < r0 + h; r++) {
        if (S == 8) gemv_rows_blocks(W, wt, cols, x, 0, y, 0, r, h, 8, 1);
        else gemv_rows_blocks_n(W, wt, cols, x, ldx, y, ldy, r, h, 4, T);
    }
    for (size_t r = r0 + h * S; r < r1; r++) gemv_rows_blocks_n(W, wt, cols, x, ldx, y, ldy, r, 0, 1, T);
}

INLINE void gemv_body(const void *W, int wt, size_t cols, const float *x, float *y,
                      size_t r0, size_t r1) {
    if (wt > SHOAL_W_BF16) {
        gemv_tokens_body(W, wt, cols, x, 0, y, 0, 1, r0, r1);
        return;
    }
    const int S = gemv_streams(wt);
    const size_t h = (r1 - r0) / S;  // rows per run; the last few run alone
    for (size_t r = r0; r < r0 + h; r++) gemv_rows(W, wt, cols, x, y, r, h, S);
    for (size_t r = r0 + h * S; r < r1; r++) gemv_rows(W, wt, cols, x, y, r, 0, 1);
}

// ---- GEMM: Y = X Wᵀ over n tokens, compute bound ---------------------------------------------

// The vector part of an R x T tile (i < R rows of W, ldw weights apart; t < T tokens of x,
// ldx floats apart) over columns k ..< end, into R*T vector accumulators: each w load feeds T
// FMAs and each x load R. Lane j of acc[i][t] adds columns j, j + VW, ... in order, so running
// the columns in several spans one after the other, the accumulators kept in between, gives
// the same bits as one span. `prefetch` is PREFETCH_AHEAD (this tile's rows GEMV_PREFETCH and
// GEMM_PREFETCH_L2 bytes ahead) or PREFETCH_NONE.
INLINE void gemm_tile_span(const void *w, int wt, size_t ldw, const float *x, size_t ldx, size_t k,
                           size_t end, int R, int T, vf acc[RT][SHOAL_TT], int prefetch) {
    const size_t line = line_weights(wt);
    for (; k + VW <= end; k += VW) {
        if (prefetch == PREFETCH_AHEAD && k % line == 0)
            UNROLL for (int i = 0; i < R; i++) {
                const char *row = (const char *)w + wbytes(wt, i * ldw + k);
                __builtin_prefetch(row + GEMV_PREFETCH, 0, 3);
                __builtin_prefetch(row + GEMM_PREFETCH_L2, 0, 2);
            }
        vf wv[RT];
        UNROLL for (int i = 0; i < R; i++) wv[i] = load_w(w, i * ldw + k, wt);
        UNROLL for (int t = 0; t < T; t++) {
            vf xv = load_f32(x + t * ldx + k);
            UNROLL for (int i = 0; i < R; i++) acc[i][t] += wv[i] * xv;
        }
    }
}

// The end of a tile: each accumulator summed across its lanes, the columns k ..< kc past the
// last whole vector added one by one, and y[t*ldy + i*ys] set to (or, with `accumulate`,
// increased by) the result.
INLINE void gemm_tile_finish(const void *w, int wt, size_t ldw, const float *x, size_t ldx, size_t k,
                             size_t kc, float *y, size_t ldy, size_t ys, int R, int T, int accumulate,
                             vf acc[RT][SHOAL_TT]) {
    UNROLL for (int t = 0; t < T; t++) {
        v4 s = R == RT ? hsum4(acc[0][t], acc[1][t], acc[2][t], acc[3][t])
                       : (v4){hsum(acc[0][t]), 0, 0, 0};
        UNROLL for (int i = 0; i < R; i++) {
            float v = s[i];
            for (size_t c = k; c < kc; c++) v += scalar_w(w, i * ldw + c, wt) * x[t * ldx + c];
            float *out = y + t * ldy + i * ys;
            *out = accumulate ? *out + v : v;
        }
    }
}

// y[t*ldy + i*ys] (+)= w[i,:kc] · x[t*ldx + :kc] for an R x T tile, its columns in one span.
INLINE void gemm_tile(const void *w, int wt, size_t ldw, const float *x, size_t ldx,
                      size_t kc, float *y, size_t ldy, size_t ys, int R, int T, int accumulate,
                      int prefetch) {
    vf acc[RT][SHOAL_TT];
    UNROLL for (int i = 0; i < RT; i++) UNROLL for (int t = 0; t < SHOAL_TT; t++) acc[i][t] = 0;
    gemm_tile_span(w, wt, ldw, x, ldx, 0, kc, R, T, acc, prefetch);
    gemm_tile_finish(w, wt, ldw, x, ldx, kc / VW * VW, kc, y, ldy, ys, R, T, accumulate, acc);
}

// One R x T tile for any T <= SHOAL_TT: the switch turns T into a constant so every tile
// width gets its own fully unrolled loop.
#define EACH_TILE_WIDTH(T, CALL)                                                             \
    switch (T) {                                                                             \
    case 1: CALL(1); break;                                                                  \
    case 2: CALL((2 <= SHOAL_TT ? 2 : 1)); break;                                            \
    case 3: CALL((3 <= SHOAL_TT ? 3 : 1)); break;                                            \
    case 4: CALL((4 <= SHOAL_TT ? 4 : 1)); break;                                            \
    case 5: CALL((5 <= SHOAL_TT ? 5 : 1)); break;                                            \
    case 6: CALL((6 <= SHOAL_TT ? 6 : 1)); break;                                            \
    case 7: CALL((7 <= SHOAL_TT ? 7 : 1)); break;                                            \
    case 8: CALL((8 <= SHOAL_TT ? 8 : 1)); break;                                            \
    }

INLINE void gemm_tile_n(const void *w, int wt, size_t ldw, const float *x, size_t ldx,
                        size_t kc, float *y, size_t ldy, size_t ys, int R, size_t T,
                        int accumulate, int prefetch) {
#define TILE(N) gemm_tile(w, wt, ldw, x, ldx, kc, y, ldy, ys, R, N, accumulate, prefetch)
    EACH_TILE_WIDTH(T, TILE)
#undef TILE
}

// A span of a tile whose accumulators wait in memory between spans (zeroed by the first).
INLINE void gemm_tile_span_n(const void *w, int wt, size_t ldw, const float *x, size_t ldx, size_t k,
                             size_t end, int R, size_t T, vf saved[RT][SHOAL_TT], int first) {
#define SPAN(N)                                                                              \
    do {                                                                                     \
        vf acc[RT][SHOAL_TT];                                                                \
        UNROLL for (int i = 0; i < RT; i++) UNROLL for (int t = 0; t < N; t++)               \
            acc[i][t] = first ? 0 : saved[i][t];                                             \
        gemm_tile_span(w, wt, ldw, x, ldx, k, end, R, N, acc, PREFETCH_NONE);                \
        UNROLL for (int i = 0; i < RT; i++) UNROLL for (int t = 0; t < N; t++) saved[i][t] = acc[i][t]; \
    } while (0)
    EACH_TILE_WIDTH(T, SPAN)
#undef SPAN
}

INLINE void gemm_tile_finish_n(const void *w, int wt, size_t ldw, const float *x, size_t ldx, size_t k,
                               size_t kc, float *y, size_t ldy, int R, size_t T, int accumulate,
                               vf saved[RT][SHOAL_TT]) {
#define FINISH(N) gemm_tile_finish(w, wt, ldw, x, ldx, k, kc, y, ldy, 1, R, N, accumulate, saved)
    EACH_TILE_WIDTH(T, FINISH)
#undef FINISH
}

// Columns a blocked GEMM's tiles take at a time when a K block is longer than KS_MIN: a token
// tile's x slice over KS columns (SHOAL_TT x KS floats, 6 KB with AVX-512) stays in L1 while
// every row tile of the block passes, where a whole K block's (48 KB over 2048 columns) did
// not. Up to KS_MIN columns (24 KB) a K block goes in one span. Measured on Zen 5 (mini,
// `shoal bench --prompt-tokens 512 --gen-tokens 1 --repeats 1`, 10 interleaved runs, median
// prefill tokens/s, one span -> spans of 256 beyond 1024 columns): Q8_0 457 -> 524, Q4_K_M
// 498 -> 537, bf16 649 -> 677; spans of 256 at every length did no better (539, 539, 648).
#define KS 256
#define KS_MIN 1024

// y[t*ldy + i] (+)= w[i, :kc] · x[t*ldx + :kc] for i < R <= MC rows, t < n tokens. Token tiles
// run outside row tiles so a token tile's x is loaded from L2 once for all R rows; within a
// token tile, the columns go KS at a time across every row tile, each tile's accumulators kept
// in `saved` in between (the same sums in the same order as one span: the same bits).
INLINE void gemm_rows(const void *w, int wt, size_t ldw, size_t R, const float *x,
                      size_t ldx, size_t kc, size_t n, float *y, size_t ldy, int accumulate) {
    vf saved[MC / RT + RT][RT][SHOAL_TT];  // a tile per RT rows, and one per leftover row
    const size_t kv = kc / VW * VW;  // columns in whole vectors
    for (size_t t = 0; t < n; t += SHOAL_TT) {
        size_t T = n - t < SHOAL_TT ? n - t : SHOAL_TT;
        const float *xt = x + t * ldx;
        float *yt = y + t * ldy;
        size_t k = 0;
        do {  // at least once: the first span zeroes the accumulators, even with no whole vector
            const size_t end = kc <= KS_MIN || kv - k <= KS ? kv : k + KS;
            size_t i = 0, tile = 0;
            for (; i + RT <= R; i += RT, tile++)
                gemm_tile_span_n((const char *)w + wbytes(wt, i * ldw), wt, ldw, xt, ldx, k, end, RT, T,
                                 saved[tile], k == 0);
            for (; i < R; i++, tile++)
                gemm_tile_span_n((const char *)w + wbytes(wt, i * ldw), wt, ldw, xt, ldx, k, end, 1, T,
                                 saved[tile], k == 0);
            k = end;
        } while (k < kv);
        size_t i = 0, tile = 0;
        for (; i + RT <= R; i += RT, tile++)
            gemm_tile_finish_n((const char *)w + wbytes(wt, i * ldw), wt, ldw, xt, ldx, kv, kc, yt + i, ldy, RT, T,
                               accumulate, saved[tile]);
        for (; i < R; i++, tile++)
            gemm_tile_finish_n((const char *)w + wbytes(wt, i * ldw), wt, ldw, xt, ldx, kv, kc, yt + i, ldy, 1, T,
                               accumulate, saved[tile]);
    }
}

// Few tokens read W from memory much as a GEMV does, so they walk it the GEMV's way: the rows
// split into RT runs side by side, whole rows in storage order, each tile taking its RT rows one
// from each run (every tile row its own stream) with every token tile and K block of those rows
// before moving on; x, n x cols floats, stays in L2. Sums run in the same order as gemm_blocked.
// Measured on Zen 4 before the walk prefetched (see GEMM_PREFETCH_L2 for what that added; shoal
// bench-kernels, 3584x1024 bf16, one thread, 3 interleaved runs, us per product, blocked ->
// streamed): 2 tokens 662-796 -> 323-507, 4 tokens 689-828 -> 533-681,
// 8 tokens 884-1026 -> 764-884, 16 tokens 1409-1625 -> 1326-1476; 32 tokens 2703-2828 ->
// 2497-2578; 64 tokens the blocked kernel wins.
INLINE void gemm_stream_rows(const void *W, int wt, size_t cols, const float *X, size_t ldx,
                             size_t n, float *Y, size_t ldy, size_t r, size_t run, int R) {
    for (size_t t = 0; t < n; t += SHOAL_TT) {
        size_t T = n - t < SHOAL_TT ? n - t : SHOAL_TT;
        for (size_t k0 = 0; k0 < cols; k0 += KC) {
            size_t kc = cols - k0 < KC ? cols - k0 : KC;
            gemm_tile_n((const char *)W + wbytes(wt, r * cols + k0), wt, run * cols, X + t * ldx + k0,
                        ldx, kc, Y + t * ldy + r, ldy, run, R, T, k0 > 0,
                        t == 0 ? PREFETCH_AHEAD : PREFETCH_NONE);
        }
    }
}

// gemm_stream_rows for a block format: each K block of the R rows is dequantized once into a
// float32 scratch (RT x KC, 32 KB) by dequantize_span, and every token tile then runs over it as
// it would over the float32 rows: the same sums, without dequantizing once per token tile.
INLINE void gemm_stream_rows_blocks(const void *W, int wt, size_t cols, const float *X, size_t ldx,
                                    size_t n, float *Y, size_t ldy, size_t r, size_t run, int R) {
    float scratch[RT * KC];
    for (size_t k0 = 0; k0 < cols; k0 += KC) {
        size_t kc = cols - k0 < KC ? cols - k0 : KC;
        for (int i = 0; i < R; i++)
            dequantize_span((const uint8_t *)W + wbytes(wt, (r + i * run) * cols), wt, k0, kc, scratch + i * kc);
        for (size_t t = 0; t < n; t += SHOAL_TT) {
            size_t T = n - t < SHOAL_TT ? n - t : SHOAL_TT;
            gemm_tile_n(scratch, SHOAL_W_F32, kc, X + t * ldx + k0, ldx, kc, Y + t * ldy + r, ldy, run, R, T,
                        k0 > 0, PREFETCH_NONE);
        }
    }
}

INLINE void gemm_streams(const void *W, int wt, size_t cols, const float *X, size_t ldx,
                         size_t n, float *Y, size_t ldy, size_t r0, size_t r1) {
    const size_t h = (r1 - r0) / RT;  // rows per run; the last few rows go alone
    if (wt > SHOAL_W_BF16) {
        for (size_t r = r0; r < r0 + h; r++) gemm_stream_rows_blocks(W, wt, cols, X, ldx, n, Y, ldy, r, h, RT);
        for (size_t r = r0 + h * RT; r < r1; r++) gemm_stream_rows_blocks(W, wt, cols, X, ldx, n, Y, ldy, r, 0, 1);
        return;
    }
    for (size_t r = r0; r < r0 + h; r++) gemm_stream_rows(W, wt, cols, X, ldx, n, Y, ldy, r, h, RT);
    for (size_t r = r0 + h * RT; r < r1; r++)
        gemm_stream_rows(W, wt, cols, X, ldx, n, Y, ldy, r, 0, 1);
}

// Y[t*ldy + r] = W[r,:] · X[t*ldx + :cols] for r in [r0, r1), t < n, one MC x KC block of W at
// a time; later K blocks add to what the first stored. A block-quantized block is dequantized
// once into a float32 scratch of MC x KC (the tiles would otherwise dequantize every weight once
// per token tile); the tiles then compute exactly what they compute over the quantized block.
INLINE void gemm_blocked(const void *W, int wt, size_t cols, const float *X, size_t ldx,
                      size_t n, float *Y, size_t ldy, size_t r0, size_t r1) {
    const int blocks = wt > SHOAL_W_BF16;  // a constant after inlining
    float *scratch = blocks ? malloc(MC * KC * sizeof(float)) : NULL;
    for (size_t k0 = 0; k0 < cols; k0 += KC) {
        size_t kc = cols - k0 < KC ? cols - k0 : KC;
        for (size_t r = r0; r < r1; r += MC) {
            size_t R = r1 - r < MC ? r1 - r : MC;
            if (blocks) {
                for (size_t i = 0; i < R; i++)
                    dequantize_span((const uint8_t *)W + wbytes(wt, (r + i) * cols), wt, k0, kc, scratch + i * kc);
                gemm_rows(scratch, SHOAL_W_F32, kc, R, X + k0, ldx, kc, n, Y + r, ldy, k0 > 0);
            } else {
                gemm_rows((const char *)W + wbytes(wt, r * cols + k0), wt, cols, R, X + k0, ldx, kc, n, Y + r,
                          ldy, k0 > 0);
            }
        }
    }
    free(scratch);
}

INLINE void gemm_body(const void *W, int wt, size_t cols, const float *X, size_t ldx,
                      size_t n, float *Y, size_t ldy, size_t r0, size_t r1) {
    if (n == 1) {  // y[0*ldy + r] is y[r]: one token is a GEMV, bandwidth bound
        gemv_body(W, wt, cols, X, Y, r0, r1);
        return;
    }
    if (cols == 0) {  // no K blocks: an empty dot product is 0
        for (size_t t = 0; t < n; t++)
            __builtin_memset(Y + t * ldy + r0, 0, (r1 - r0) * sizeof(float));
        return;
    }
    if (wt > SHOAL_W_BF16 && n <= gemm_gemv_tokens(wt)) {
        for (size_t t = 0; t < n; t += GEMV_TOKENS) {
            const int T = n - t < GEMV_TOKENS ? (int)(n - t) : GEMV_TOKENS;
            gemv_tokens_body(W, wt, cols, X + t * ldx, ldx, Y + t * ldy, ldy, T, r0, r1);
        }
        return;
    }
    if (n <= GEMM_STREAM_TOKENS) gemm_streams(W, wt, cols, X, ldx, n, Y, ldy, r0, r1);
    else gemm_blocked(W, wt, cols, X, ldx, n, Y, ldy, r0, r1);
}

// ---- attention and probes ------------------------------------------------------------------

INLINE float dot_body(const float *a, const float *b, size_t n) {
    vf s0 = 0, s1 = 0;
    size_t i = 0;
    for (; i + 2 * VW <= n; i += 2 * VW) {
        s0 += load_f32(a + i) * load_f32(b + i);
        s1 += load_f32(a + i + VW) * load_f32(b + i + VW);
    }
    for (; i + VW <= n; i += VW) s0 += load_f32(a + i) * load_f32(b + i);
    float s = hsum(s0 + s1);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

INLINE void axpy_body(float *y, float alpha, const float *x, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) store_f32(y + i, load_f32(y + i) + alpha * load_f32(x + i));
    for (; i < n; i++) y[i] += alpha * x[i];
}

// e^x for x <= 0, every lane (a softmax's exponent after subtracting the maximum): x = n ln 2 +
// r with |r| <= ln 2 / 2, e^r by its Taylor series to r^7 (truncation below 6e-9 relative),
// times 2^n built in the exponent bits. Within a few float ulps of expf; below -87.3 (past
// FLT_MIN) it is 0, where expf would give a subnormal no softmax weight can use.
INLINE vf exp_nonpositive(vf x) {
    const vf magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer, ties to even
    vf t = x * 1.44269504088896341f + magic;
    vf n = t - magic;
    vf r = x - n * 0.693145751953125f;  // ln 2 in two parts: n * hi is exact
    r = r - n * 1.42860682030941723e-6f;
    vf p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    vf scaled = p * (vf)e;
    return x < -87.3f ? (vf)0.0f : scaled;
}

// s[0..<n] = softmax(s[0..<n]) in place: the maximum, e^(s - max) and their sum a vector at a
// time (the tail through a padded vector), then each divided by the sum.
INLINE void softmax_in_place(float *s, size_t n) {
    vf mv = -__builtin_inff();
    size_t j = 0;
    for (; j + VW <= n; j += VW) {
        vf v = load_f32(s + j);
        mv = v > mv ? v : mv;
    }
    float m = -__builtin_inff();
    for (int l = 0; l < VW; l++) m = mv[l] > m ? mv[l] : m;
    for (; j < n; j++) m = s[j] > m ? s[j] : m;
    vf sumv = 0;
    for (j = 0; j + VW <= n; j += VW) {
        vf e = exp_nonpositive(load_f32(s + j) - m);
        store_f32(s + j, e);
        sumv += e;
    }
    if (j < n) {
        vf tail = -__builtin_inff();
        for (size_t l = 0; j + l < n; l++) tail[l] = s[j + l];
        vf e = exp_nonpositive(tail - m);  // the padding's e^-inf is 0
        for (size_t l = 0; j + l < n; l++) s[j + l] = e[l];
        sumv += e;
    }
    float sum = hsum(sumv);
    vf sv = sum;
    for (j = 0; j + VW <= n; j += VW) store_f32(s + j, load_f32(s + j) / sv);
    for (; j < n; j++) s[j] = s[j] / sum;
}

// a[i] = silu(a[i]) * b[i]. sigmoid(x) is 1 / (1 + e) for x >= 0 and e / (1 + e) below, with
// e = e^-|x| <= 1: the same function as x / (1 + e^-x), without e^-x overflowing for x < -88.
INLINE vf swiglu_vector(vf x, vf y) {
    vf e = exp_nonpositive(x < 0 ? x : -x);
    vf sigmoid = (x < 0 ? e : (vf)1.0f) / (1.0f + e);
    return x * sigmoid * y;
}
INLINE void swiglu_body(float *a, const float *b, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) store_f32(a + i, swiglu_vector(load_f32(a + i), load_f32(b + i)));
    if (i < n) {
        vf x = 0, y = 0;
        for (size_t l = 0; i + l < n; l++) { x[l] = a[i + l]; y[l] = b[i + l]; }
        vf r = swiglu_vector(x, y);
        for (size_t l = 0; i + l < n; l++) a[i + l] = r[l];
    }
}

// Causal attention of G query heads sharing one key/value head, for one query position:
// out[g*hd..] = Σ_j softmax_j(scale · q_g·k_j) v_j over positions j in [lo, hi), key j at
// keys + j*stride, value j at values + j*stride; scores[g*n + j] is scratch (n = hi - lo).
// Four heads at a time, so each key and value row is read once per four heads: a key's four
// dot products share one horizontal sum (hsum4), and the four heads' outputs, four vectors of
// columns at a time, stay in registers while every value row is added (in position order, as
// y += p_j v_j would).
INLINE void attend_body(const float *q, size_t G, size_t hd, const float *keys,
                        const float *values, size_t stride, size_t lo, size_t hi, float scale,
                        float *scores, float *out) {
    const size_t n = hi - lo, vhd = hd - hd % VW;
    for (size_t g0 = 0; g0 < G; g0 += 4) {
        const size_t H = G - g0 < 4 ? G - g0 : 4;
        const float *qg = q + g0 * hd;
        float *sg = scores + g0 * n;
        for (size_t j = 0; j < n; j++) {
            const float *k = keys + (lo + j) * stride;
            vf acc[4] = {0, 0, 0, 0};
            for (size_t i = 0; i < vhd; i += VW) {
                vf kv = load_f32(k + i);
                UNROLL for (int h = 0; h < 4; h++)
                    if ((size_t)h < H) acc[h] += load_f32(qg + h * hd + i) * kv;
            }
            v4 dots = hsum4(acc[0], acc[1], acc[2], acc[3]);
            for (size_t h = 0; h < H; h++) {
                float d = dots[h];
                for (size_t i = vhd; i < hd; i++) d += qg[h * hd + i] * k[i];
                sg[h * n + j] = d * scale;
            }
        }
        for (size_t h = 0; h < H; h++) softmax_in_place(sg + h * n, n);

        float *og = out + g0 * hd;
        size_t c0 = 0;
        for (; c0 + 4 * VW <= vhd; c0 += 4 * VW) {
            vf acc[4][4] = {{0}};
            for (size_t j = 0; j < n; j++) {
                const float *v = values + (lo + j) * stride + c0;
                vf vv[4];
                UNROLL for (int c = 0; c < 4; c++) vv[c] = load_f32(v + c * VW);
                UNROLL for (int h = 0; h < 4; h++) {
                    if ((size_t)h >= H) continue;
                    vf p = sg[h * n + j];
                    UNROLL for (int c = 0; c < 4; c++) acc[h][c] += p * vv[c];
                }
            }
            for (size_t h = 0; h < H; h++)
                UNROLL for (int c = 0; c < 4; c++) store_f32(og + h * hd + c0 + c * VW, acc[h][c]);
        }
        for (; c0 < vhd; c0 += VW) {
            vf acc[4] = {0, 0, 0, 0};
            for (size_t j = 0; j < n; j++) {
                vf vv = load_f32(values + (lo + j) * stride + c0);
                UNROLL for (int h = 0; h < 4; h++)
                    if ((size_t)h < H) acc[h] += (vf)sg[h * n + j] * vv;
            }
            for (size_t h = 0; h < H; h++) store_f32(og + h * hd + c0, acc[h]);
        }
        for (size_t h = 0; h < H; h++)
            for (size_t i = vhd; i < hd; i++) {
                float a = 0;
                for (size_t j = 0; j < n; j++) a += sg[h * n + j] * values[(lo + j) * stride + i];
                og[h * hd + i] = a;
            }
    }
}

// Four independent sums so the adds never wait on each other: only memory limits the loop.
INLINE float read_sum_body(const float *p, size_t n) {
    vf s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 * VW <= n; i += 4 * VW)
        UNROLL for (int j = 0; j < 4; j++) s[j] += load_f32(p + i + j * VW);
    float total = hsum(s[0] + s[1] + s[2] + s[3]);
    for (; i < n; i++) total += p[i];
    return total;
}

// ---- this instruction set's entry points ---------------------------------------------------

// One copy of each body per weight type, so `wt` is a constant inside it.
#define EACH_WEIGHT_TYPE(CALL)                         \
    switch (wt) {                                      \
    case SHOAL_W_F32: CALL(SHOAL_W_F32); break;        \
    case SHOAL_W_BF16: CALL(SHOAL_W_BF16); break;      \
    case SHOAL_W_Q8_0: CALL(SHOAL_W_Q8_0); break;      \
    case SHOAL_W_Q4_0: CALL(SHOAL_W_Q4_0); break;      \
    case SHOAL_W_Q4_K: CALL(SHOAL_W_Q4_K); break;      \
    case SHOAL_W_Q5_K: CALL(SHOAL_W_Q5_K); break;      \
    case SHOAL_W_Q6_K: CALL(SHOAL_W_Q6_K); break;      \
    case SHOAL_W_Q4_1: CALL(SHOAL_W_Q4_1); break;      \
    case SHOAL_W_Q5_0: CALL(SHOAL_W_Q5_0); break;      \
    case SHOAL_W_Q5_1: CALL(SHOAL_W_Q5_1); break;      \
    case SHOAL_W_Q2_K: CALL(SHOAL_W_Q2_K); break;      \
    case SHOAL_W_Q3_K: CALL(SHOAL_W_Q3_K); break;      \
    }

SHOAL_ATTR static void gemv(int wt, const void *w, size_t cols, const float *x, float *y,
                            size_t r0, size_t r1) {
#define GEMV(T) gemv_body(w, T, cols, x, y, r0, r1)
    EACH_WEIGHT_TYPE(GEMV)
#undef GEMV
}
SHOAL_ATTR static void gemm(int wt, const void *w, size_t cols, const float *x, size_t ldx,
                            size_t n, float *y, size_t ldy, size_t r0, size_t r1) {
#define GEMM(T) gemm_body(w, T, cols, x, ldx, n, y, ldy, r0, r1)
    EACH_WEIGHT_TYPE(GEMM)
#undef GEMM
}
INLINE void dequantize_body(const void *w, int wt, size_t n, float *out) {
    if (wt > SHOAL_W_BF16) {
        dequantize_span(w, wt, 0, n, out);
        return;
    }
    size_t k = 0;
    for (; k + VW <= n; k += VW) store_f32(out + k, load_w(w, k, wt));
    for (; k < n; k++) out[k] = scalar_w(w, k, wt);
}
SHOAL_ATTR static void dequantize(int wt, const void *w, size_t n, float *out) {
#define DEQUANTIZE(T) dequantize_body(w, T, n, out)
    EACH_WEIGHT_TYPE(DEQUANTIZE)
#undef DEQUANTIZE
}
SHOAL_ATTR static float dot_f32(const float *a, const float *b, size_t n) {
    return dot_body(a, b, n);
}
SHOAL_ATTR static void axpy_f32(float *y, float alpha, const float *x, size_t n) {
    axpy_body(y, alpha, x, n);
}
SHOAL_ATTR static void attend_f32(const float *q, size_t G, size_t hd, const float *keys,
                                  const float *values, size_t stride, size_t lo, size_t hi,
                                  float scale, float *scores, float *out) {
    attend_body(q, G, hd, keys, values, stride, lo, hi, scale, scores, out);
}
SHOAL_ATTR static void swiglu_f32(float *a, const float *b, size_t n) { swiglu_body(a, b, n); }
SHOAL_ATTR static float read_sum_f32(const float *p, size_t n) { return read_sum_body(p, n); }

const struct shoal_kernel_table SHOAL_TABLE = {
    .name = SHOAL_ISA_NAME,
    .level = SHOAL_ISA_LEVEL,
    .gemv = gemv,
    .gemm = gemm,
    .dequantize = dequantize,
    .dot_f32 = dot_f32,
    .axpy_f32 = axpy_f32,
    .attend_f32 = attend_f32,
    .swiglu_f32 = swiglu_f32,
    .read_sum_f32 = read_sum_f32,
};
