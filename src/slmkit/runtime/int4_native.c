/* Grouped int4 weights x float32 activations on AVX2 CPUs: slmkit's decode kernel.
 *
 * Compiled on first use by slmkit/runtime/native.py (cc -O3 -mavx2 -mfma -fopenmp);
 * see that module for why it exists and how it is checked.
 *
 * Weights: codes q in [0, 15], bit-packed as compressed-tensors stores them (int32 words of 8
 * codes, code j in bits 4j..4j+3, little-endian; as bytes: byte i of a row holds column 2i in its
 * low nibble and column 2i+1 in its high nibble), with a float32 scale s and zero point z per
 * (row, group of `gs` contiguous columns):  W[n, k] = (q[n, k] - z[n, k / gs]) * s[n, k / gs].
 *
 * int4_gemv:    y[m, n] = sum_k W[n, k] x[m, k]   for a few rows m (decode).
 *   Each 32-column block of x is quantized to int16 with its own scale (max |x| / 32767), so
 *   sum_k q x runs as 16-bit integer multiply-adds (_mm256_madd_epi16) over codes unpacked with
 *   byte operations; the error is at most half an int16 step of the block's largest activation
 *   (2^-16 relative), below bf16's rounding of activations (2^-9). The zero-point term
 *   sum_k z s x uses the exact float32 block sums of x.
 * int4_dequant: W as float32 [N, K] (prefill: dequantize, then a BLAS matmul).
 * int8_gemv:    the same for int8 weights with one scale per row (the quantized lm_head):
 *   W[n, k] = w[n, k] * s[n] + c[n], w int8, so y[m, n] = s[n] sum_k w x + c[n] sum_k x.
 *
 * Requires: K % 32 == 0, gs % 32 == 0, K % gs == 0 (checked by the caller).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 32

/* x [K] -> int16 codes [K], block scales dx [K/32] and exact block sums xs [K/32]. In nibble
 * order (per 32-block: 16 even columns, then 16 odd ones) for int4 codes, else column order. */
static void quantize_x(const float *x, int64_t K, int16_t *xq, float *dx, float *xs, int nibble) {
    for (int64_t b = 0; b < K / BLOCK; b++) {
        const float *xb = x + b * BLOCK;
        float amax = 0.f, sum = 0.f;
        for (int i = 0; i < BLOCK; i++) {
            float a = fabsf(xb[i]);
            amax = a > amax ? a : amax;
            sum += xb[i];
        }
        float d = amax / 32767.f;
        float inv = d > 0.f ? 1.f / d : 0.f;
        int16_t *o = xq + b * BLOCK;
        if (nibble) {
            for (int i = 0; i < BLOCK / 2; i++) {
                o[i] = (int16_t)lrintf(xb[2 * i] * inv);
                o[BLOCK / 2 + i] = (int16_t)lrintf(xb[2 * i + 1] * inv);
            }
        } else {
            for (int i = 0; i < BLOCK; i++) o[i] = (int16_t)lrintf(xb[i] * inv);
        }
        dx[b] = d;
        xs[b] = sum;
    }
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* one output: sum_k W[n, k] x[k] for row n (codes: K/2 bytes) */
static inline float row_dot(const uint8_t *codes, const float *s, const float *z, int64_t K,
                            int64_t gs, const int16_t *xq, const float *dx, const float *xs) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    const int64_t bpg = gs / BLOCK;  /* blocks per group */
    __m256 acc = _mm256_setzero_ps();
    float zero_term = 0.f;
    for (int64_t g = 0; g < K / gs; g++) {
        __m256 gacc = _mm256_setzero_ps();
        float gsum = 0.f;
        for (int64_t bb = 0; bb < bpg; bb++) {
            int64_t b = g * bpg + bb;
            __m128i v = _mm_loadu_si128((const __m128i *)(codes + b * (BLOCK / 2)));
            __m128i lo = _mm_and_si128(v, mask);                      /* even columns */
            __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);  /* odd columns */
            __m256i qlo = _mm256_cvtepu8_epi16(lo);
            __m256i qhi = _mm256_cvtepu8_epi16(hi);
            __m256i xlo = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
            __m256i xhi = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK + 16));
            __m256i d = _mm256_add_epi32(_mm256_madd_epi16(qlo, xlo), _mm256_madd_epi16(qhi, xhi));
            gacc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(dx[b]), gacc);
            gsum += xs[b];
        }
        acc = _mm256_fmadd_ps(gacc, _mm256_set1_ps(s[g]), acc);
        zero_term += z[g] * s[g] * gsum;
    }
    return hsum(acc) - zero_term;
}

/* y [M, N] = x [M, K] @ W^T; scratch: none (allocates K*2 + K/16 floats per call) */
int int4_gemv(const float *x, int64_t M, int64_t K, const uint8_t *codes, const float *scale,
              const float *zero, int64_t N, int64_t gs, float *y) {
    if (K % BLOCK || gs % BLOCK || K % gs) return 1;
    int16_t *xq = (int16_t *)aligned_alloc(64, ((M * K * 2 + 63) / 64) * 64);
    float *dx = (float *)malloc(sizeof(float) * M * (K / BLOCK));
    float *xs = (float *)malloc(sizeof(float) * M * (K / BLOCK));
    if (!xq || !dx || !xs) { free(xq); free(dx); free(xs); return 2; }
    for (int64_t m = 0; m < M; m++)
        quantize_x(x + m * K, K, xq + m * K, dx + m * (K / BLOCK), xs + m * (K / BLOCK), 1);
    const int64_t G = K / gs;
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *c = codes + n * (K / 2);
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = row_dot(c, scale + n * G, zero + n * G, K, gs, xq + m * K,
                                   dx + m * (K / BLOCK), xs + m * (K / BLOCK));
    }
    free(xq); free(dx); free(xs);
    return 0;
}

/* w [N, K] float32 = dequantized weights */
int int4_dequant(const uint8_t *codes, const float *scale, const float *zero, int64_t N,
                 int64_t K, int64_t gs, float *w) {
    if (K % 2 || K % gs) return 1;
    const int64_t G = K / gs;
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *c = codes + n * (K / 2);
        float *o = w + n * K;
        for (int64_t g = 0; g < G; g++) {
            const float s = scale[n * G + g], z = zero[n * G + g];
            for (int64_t k = g * gs; k < (g + 1) * gs; k += 2) {  /* (q - z) * s, as torch does */
                uint8_t b = c[k / 2];
                o[k] = ((float)(b & 0x0F) - z) * s;
                o[k + 1] = ((float)(b >> 4) - z) * s;
            }
        }
    }
    return 0;
}

/* one output of int8_gemv: sum_k w[n, k] x[k] (before the row scale) */
static inline float row_dot8(const int8_t *w, int64_t K, const int16_t *xq, const float *dx) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / BLOCK; b++) {
        __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + b * BLOCK)));
        __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + b * BLOCK + 16)));
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK + 16));
        __m256i d = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(dx[b]), acc);
    }
    return hsum(acc);
}

/* y [M, N] = x [M, K] @ W^T with W[n, k] = w[n, k] * s[n] + c[n] (w int8) */
int int8_gemv(const float *x, int64_t M, int64_t K, const int8_t *w, const float *s,
              const float *c, int64_t N, float *y) {
    if (K % BLOCK) return 1;
    int16_t *xq = (int16_t *)aligned_alloc(64, ((M * K * 2 + 63) / 64) * 64);
    float *dx = (float *)malloc(sizeof(float) * M * (K / BLOCK));
    float *xs = (float *)malloc(sizeof(float) * M * (K / BLOCK));
    float *xsum = (float *)malloc(sizeof(float) * M);
    if (!xq || !dx || !xs || !xsum) { free(xq); free(dx); free(xs); free(xsum); return 2; }
    for (int64_t m = 0; m < M; m++) {
        quantize_x(x + m * K, K, xq + m * K, dx + m * (K / BLOCK), xs + m * (K / BLOCK), 0);
        float t = 0.f;
        for (int64_t b = 0; b < K / BLOCK; b++) t += xs[m * (K / BLOCK) + b];
        xsum[m] = t;
    }
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wn = w + n * K;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = s[n] * row_dot8(wn, K, xq + m * K, dx + m * (K / BLOCK)) + c[n] * xsum[m];
    }
    free(xq); free(dx); free(xs); free(xsum);
    return 0;
}

/* dense_gemm: y [M, N] = x [M, K] @ W^T for a few rows of x (M <= 16: speculative verification,
 * small-batch decode), W float32 (wbits 32) or bf16 (wbits 16: the upper half of a float32).
 * Memory-bound by design: each weight row is read from memory once and used for up to 6 rows of
 * x per pass, with exactly one accumulator per row (a 5-token verification is one pass, not a
 * 4-row pass plus a 1-row pass that costs as much), where BLAS packs the whole matrix per call
 * (slmkit/models/narrow.py). Requires K % 8 == 0. */
static inline __m256 load_w(const void *w, int wbits, int64_t off) {
    if (wbits == 32) return _mm256_loadu_ps((const float *)w + off);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + off));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* dense_pass_C: y[m, n] for the C rows m = m0 .. m0 + C - 1 of x and one weight row n;
 * dense_pass2_C: the same for weight rows n and n + 1 together, so each load of x feeds two
 * FMAs (C <= 6: 2C accumulators + 3 temporaries fit AVX2's 16 registers). */
#define ACC(i) __m256 a##i = _mm256_setzero_ps();
#define FMA(i) a##i = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (m0 + i) * K + k), a##i);
#define OUT(i) y[(m0 + i) * N + n] = hsum(a##i);
#define ACC2(i) __m256 a##i = _mm256_setzero_ps(), b##i = a##i;
#define FMA2(i) { __m256 xv = _mm256_loadu_ps(x + (m0 + i) * K + k);                        \
                  a##i = _mm256_fmadd_ps(wv, xv, a##i); b##i = _mm256_fmadd_ps(wv2, xv, b##i); }
#define OUT2(i) y[(m0 + i) * N + n] = hsum(a##i); y[(m0 + i) * N + n + 1] = hsum(b##i);
#define DENSE_PASS(C, EACH)                                                                    \
static inline void dense_pass_##C(const float *x, int64_t m0, int64_t K, const void *w,      \
                                  int wbits, int64_t n, int64_t N, float *y) {               \
    EACH(ACC)                                                                                \
    for (int64_t k = 0; k < K; k += 8) {                                                     \
        __m256 wv = load_w(w, wbits, n * K + k);                                             \
        EACH(FMA)                                                                            \
    }                                                                                        \
    EACH(OUT)                                                                                \
}
#define DENSE_PASS2(C, EACH)                                                                   \
static inline void dense_pass2_##C(const float *x, int64_t m0, int64_t K, const void *w,     \
                                   int wbits, int64_t n, int64_t N, float *y) {              \
    EACH(ACC2)                                                                               \
    for (int64_t k = 0; k < K; k += 8) {                                                     \
        __m256 wv = load_w(w, wbits, n * K + k), wv2 = load_w(w, wbits, (n + 1) * K + k);    \
        EACH(FMA2)                                                                           \
    }                                                                                        \
    EACH(OUT2)                                                                               \
}
#define EACH1(F) F(0)
#define EACH2(F) EACH1(F) F(1)
#define EACH3(F) EACH2(F) F(2)
#define EACH4(F) EACH3(F) F(3)
#define EACH5(F) EACH4(F) F(4)
#define EACH6(F) EACH5(F) F(5)
DENSE_PASS(1, EACH1) DENSE_PASS(2, EACH2) DENSE_PASS(3, EACH3) DENSE_PASS(4, EACH4)
DENSE_PASS(5, EACH5) DENSE_PASS(6, EACH6)
DENSE_PASS2(1, EACH1) DENSE_PASS2(2, EACH2) DENSE_PASS2(3, EACH3) DENSE_PASS2(4, EACH4)
DENSE_PASS2(5, EACH5) DENSE_PASS2(6, EACH6)

typedef void (*dense_pass_fn)(const float *, int64_t, int64_t, const void *, int, int64_t, int64_t, float *);
static const dense_pass_fn DENSE_PASSES[7] = {0, dense_pass_1, dense_pass_2, dense_pass_3, dense_pass_4,
                                              dense_pass_5, dense_pass_6};
static const dense_pass_fn DENSE_PASSES2[7] = {0, dense_pass2_1, dense_pass2_2, dense_pass2_3,
                                               dense_pass2_4, dense_pass2_5, dense_pass2_6};

int dense_gemm(const float *x, int64_t M, int64_t K, const void *w, int wbits, int64_t N, float *y) {
    if (K % 8 || M < 1 || M > 16 || (wbits != 32 && wbits != 16)) return 1;
    /* passes of at most 6 rows of x, as even as possible (7 rows: 4 + 3, not 6 + 1), each over
     * two weight rows at a time (the second pass reads them from cache) */
    const int64_t passes = (M + 5) / 6, first = (M + passes - 1) / passes;
    const int64_t pairs = N / 2;
    #pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < pairs + (N - 2 * pairs); p++) {
        const int two = p < pairs;
        const int64_t n = two ? 2 * p : 2 * pairs + (p - pairs);
        for (int64_t m0 = 0; m0 < M; m0 += first) {
            const int64_t c = M - m0 < first ? M - m0 : first;
            (two ? DENSE_PASSES2 : DENSE_PASSES)[c](x, m0, K, w, wbits, n, N, y);
        }
    }
    return 0;
}
