/* lmscope's native kernels for the TopK training step (dictionaries/native.py builds and loads
 * this file with the machine's C compiler; without one, the step runs on torch ops alone).
 *
 * Why: after the encoder GEMM, a TopK step's time went to torch's row top-k (a scalar partial
 * sort, ~2.6 ns per element: 50 ms at [4096, 4608], as much as the bf16 GEMM) and to sparse
 * products that run on one thread (COO sparse.mm, embedding bag's per-sample-weights backward).
 * Here:
 *   lms_topk       exact top-k of each row: a k-element min-heap per row; a vector compare of
 *                  16 (AVX-512) or 8 elements against the heap's minimum finds the few that
 *                  can enter (after the first few hundred elements, almost none).
 *                  float32 or bfloat16 input.
 *   lms_col_sort   counting sort of the (token, slot) entries of a sparse code by latent.
 *   lms_scatter_t  S^T @ dense for that code, one latent's output row at a time (no atomics,
 *                  each row written once, latents split between threads by entry count).
 *   lms_rowdot     grad_values[b, j] = <g[b], W[indices[b, j]]>.
 *   lms_remove_parallel, lms_normalize_rows: the unit-norm decoder's upkeep, one pass per row
 *                  where torch made five or six over the whole matrix.
 * Every function splits its rows over `nthreads` pthreads; the result does not depend on it.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAXT 64

/* 16 floats, loaded from any 4-byte aligned address (GCC vector extensions) */
typedef float v16f __attribute__((vector_size(64), aligned(4), may_alias));

typedef struct {
    void (*fn)(void *, int64_t, int64_t);
    void *arg;
    int64_t lo, hi;
} task;

static void *run_task(void *p) {
    task *t = (task *)p;
    t->fn(t->arg, t->lo, t->hi);
    return NULL;
}

/* fn(arg, lo, hi) over [0, n) in nthreads contiguous ranges; bounds[i] given or even split */
static void parallel(int nthreads, int64_t n, const int64_t *bounds, void (*fn)(void *, int64_t, int64_t),
                     void *arg) {
    if (nthreads > MAXT) nthreads = MAXT;
    if (nthreads <= 1 || n < 2) {
        fn(arg, 0, n);
        return;
    }
    task tasks[MAXT];
    pthread_t th[MAXT];
    int started[MAXT];
    for (int i = 0; i < nthreads; i++) {
        tasks[i].fn = fn;
        tasks[i].arg = arg;
        tasks[i].lo = bounds ? bounds[i] : n * i / nthreads;
        tasks[i].hi = bounds ? bounds[i + 1] : n * (i + 1) / nthreads;
    }
    for (int i = 1; i < nthreads; i++)
        started[i] = pthread_create(&th[i], NULL, run_task, &tasks[i]) == 0;
    run_task(&tasks[0]);
    for (int i = 1; i < nthreads; i++) {
        if (started[i])
            pthread_join(th[i], NULL);
        else
            run_task(&tasks[i]); /* no thread to be had: do its share here */
    }
}

/* ---------------------------------------------------------------- top-k */

static inline float bf16_f32(uint16_t u) {
    uint32_t v = (uint32_t)u << 16;
    float f;
    memcpy(&f, &v, 4);
    return f;
}

/* NaN ranks above everything, as in torch.topk */
static inline float key_of(float v) { return v != v ? INFINITY : v; }

static inline void sift_down(float *key, int32_t *idx, int k, int i) {
    float kv = key[i];
    int32_t iv = idx[i];
    for (;;) {
        int l = 2 * i + 1;
        if (l >= k) break;
        int r = l + 1;
        int m = (r < k && key[r] < key[l]) ? r : l;
        if (!(key[m] < kv)) break;
        key[i] = key[m];
        idx[i] = idx[m];
        i = m;
    }
    key[i] = kv;
    idx[i] = iv;
}


/* hit masks: bit t set where !(x[t] <= thr), i.e. x[t] > thr or NaN, for VW elements */
/* For VW elements: hits = bit t set where !(x[t] < thr), i.e. x[t] >= thr or NaN;
 * vmax = max(acc, x) lane-wise, ignoring NaN in x. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VW 16
typedef __m512 vf;
static inline vf ld_f32(const float *x) { return _mm512_loadu_ps(x); }
static inline vf ld_bf16(const uint16_t *x) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)x));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}
static inline uint32_t hits(vf v, float thr) {
    return _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr), _CMP_NLT_UQ);
}
static inline vf vinit(void) { return _mm512_set1_ps(-INFINITY); }
/* append the lanes of v at or above thr (and NaN) to ckey/cidx */
static inline int64_t collect(vf v, float thr, int64_t j, float *ckey, int32_t *cidx,
                              int64_t c) {
    const __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(thr), _CMP_NLT_UQ);
    if (!m) return c; /* most vectors: compress-stores cost more than this branch */
    const __m512i iota = _mm512_add_epi32(
        _mm512_set1_epi32((int)j),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_mask_compressstoreu_ps(ckey + c, m, v);
    _mm512_mask_compressstoreu_epi32(cidx + c, m, iota);
    return c + __builtin_popcount((unsigned)m);
}
static inline vf vmax(vf acc, vf v) { return _mm512_max_ps(v, acc); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline float hmax(vf acc) { return _mm512_reduce_max_ps(acc); }
#elif defined(__AVX2__)
#include <immintrin.h>
#define VW 8
typedef __m256 vf;
static inline vf ld_f32(const float *x) { return _mm256_loadu_ps(x); }
static inline vf ld_bf16(const uint16_t *x) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}
static inline uint32_t hits(vf v, float thr) {
    return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(thr), _CMP_NLT_UQ));
}
static inline vf vinit(void) { return _mm256_set1_ps(-INFINITY); }
static inline vf vmax(vf acc, vf v) { return _mm256_max_ps(v, acc); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline float hmax(vf acc) {
    float t[8], m = -INFINITY;
    _mm256_storeu_ps(t, acc);
    for (int i = 0; i < 8; i++) m = t[i] > m ? t[i] : m;
    return m;
}
#else
#define VW 8
typedef struct { float v[VW]; } vf;
static inline vf ld_f32(const float *x) { vf r; memcpy(r.v, x, sizeof r.v); return r; }
static inline vf ld_bf16(const uint16_t *x) {
    vf r;
    for (int t = 0; t < VW; t++) r.v[t] = bf16_f32(x[t]);
    return r;
}
static inline uint32_t hits(vf v, float thr) {
    uint32_t m = 0;
    for (int t = 0; t < VW; t++) m |= (uint32_t)!(v.v[t] < thr) << t;
    return m;
}
static inline vf vinit(void) { vf r; for (int t = 0; t < VW; t++) r.v[t] = -INFINITY; return r; }
static inline vf vmax(vf acc, vf v) {
    for (int t = 0; t < VW; t++) acc.v[t] = v.v[t] > acc.v[t] ? v.v[t] : acc.v[t];
    return acc;
}
static inline vf vadd(vf a, vf b) {
    for (int t = 0; t < VW; t++) a.v[t] += b.v[t];
    return a;
}
static inline float hmax(vf acc) {
    float m = -INFINITY;
    for (int t = 0; t < VW; t++) m = acc.v[t] > m ? acc.v[t] : m;
    return m;
}
#endif
#if !defined(__AVX512F__)
static inline int64_t collect(vf v, float thr, int64_t j, float *ckey, int32_t *cidx,
                              int64_t c) {
    uint32_t msk = hits(v, thr);
    float t_[VW];
    memcpy(t_, &v, sizeof t_);
    while (msk) {
        const int t = __builtin_ctz(msk);
        msk &= msk - 1;
        ckey[c] = t_[t];
        cidx[c++] = (int32_t)(j + t);
    }
    return c;
}
#endif

/* Two passes over a row. (1) Cut it into M = 2k chunks (fewer if the row is short) and take
 * each chunk's maximum: the k-th largest of those maxima, `bound`, has k distinct elements at
 * or above it, so every top-k element is >= bound. (2) Vector compares against `bound` collect
 * those few candidates (about 1.4k on random rows), and a k-element min-heap keeps the k
 * largest. Exact; a row of NaN or -inf chunks gets bound -inf and every element is a
 * candidate (slower, still exact). */
#define TOPK_ROW(NAME, T, SVAL, VLOAD)                                                 \
    static void NAME(const T *x, const float *bias, int64_t n, int k,                  \
                     const int64_t *chunks, float *key, int32_t *idx, float *ckey,     \
                     int32_t *cidx) {                                                  \
        (void)bias;                                                                    \
        const int64_t M = chunks[-1];                                                  \
        float *cm = ckey; /* the chunk maxima, before the candidates overwrite them */ \
        for (int64_t q = 0; q < M; q++) {                                              \
            int64_t j = chunks[q];                                                     \
            const int64_t hi = chunks[q + 1];                                          \
            float m = -INFINITY;                                                       \
            if (!(j % VW)) {                                                           \
                vf acc = vinit();                                                      \
                for (; j + VW <= hi; j += VW) acc = vmax(acc, VLOAD(j));               \
                m = hmax(acc);                                                         \
            }                                                                          \
            for (; j < hi; j++) {                                                      \
                const float v = SVAL(j);                                               \
                m = v > m ? v : m;                                                     \
            }                                                                          \
            cm[q] = m;                                                                 \
        }                                                                              \
        for (int i = 0; i < k; i++) {                                                  \
            key[i] = cm[i];                                                            \
            idx[i] = i;                                                                \
        }                                                                              \
        for (int i = k / 2 - 1; i >= 0; i--) sift_down(key, idx, k, i);                \
        for (int64_t q = k; q < M; q++)                                                \
            if (cm[q] > key[0]) {                                                      \
                key[0] = cm[q];                                                        \
                sift_down(key, idx, k, 0);                                             \
            }                                                                          \
        const float bound = key[0];                                                    \
        int64_t c = 0, j = 0;                                                          \
        for (; j + VW <= n; j += VW) c = collect(VLOAD(j), bound, j, ckey, cidx, c);   \
        for (; j < n; j++) {                                                           \
            const float v = SVAL(j);                                                   \
            if (!(v < bound)) {                                                        \
                ckey[c] = v;                                                           \
                cidx[c++] = (int32_t)j;                                                \
            }                                                                          \
        }                                                                              \
        /* c >= k: the k chunk maxima are candidates */                                \
        for (int64_t i = 0; i < c; i++) ckey[i] = key_of(ckey[i]);                     \
        for (int i = 0; i < k; i++) {                                                  \
            key[i] = ckey[i];                                                          \
            idx[i] = cidx[i];                                                          \
        }                                                                              \
        for (int i = k / 2 - 1; i >= 0; i--) sift_down(key, idx, k, i);                \
        for (int64_t i = k; i < c; i++)                                                \
            if (ckey[i] > key[0]) {                                                    \
                key[0] = ckey[i];                                                      \
                idx[0] = cidx[i];                                                      \
                sift_down(key, idx, k, 0);                                             \
            }                                                                          \
    }

/* the row's values, and with a bias vector added (float32 sums) */
#define F32_S(j) (x[j])
#define F32_V(j) ld_f32(x + (j))
#define F32B_S(j) (x[j] + bias[j])
#define F32B_V(j) vadd(ld_f32(x + (j)), ld_f32(bias + (j)))
#define BF_S(j) bf16_f32(x[j])
#define BF_V(j) ld_bf16(x + (j))
#define BFB_S(j) (bf16_f32(x[j]) + bias[j])
#define BFB_V(j) vadd(ld_bf16(x + (j)), ld_f32(bias + (j)))
TOPK_ROW(topk_row_f32, float, F32_S, F32_V)
TOPK_ROW(topk_row_f32b, float, F32B_S, F32B_V)
TOPK_ROW(topk_row_bf16, uint16_t, BF_S, BF_V)
TOPK_ROW(topk_row_bf16b, uint16_t, BFB_S, BFB_V)

typedef struct {
    const void *x;
    const float *bias; /* [n] or NULL */
    int bf16;
    int64_t n, ld;
    int k;
    void *vals;    /* [rows, k], the input's dtype */
    int64_t *out_idx; /* [rows, k] */
    volatile int failed;
} topk_args;

static void topk_range(void *p, int64_t lo, int64_t hi) {
    topk_args *a = (topk_args *)p;
    float key[4096];
    int32_t idx[4096];
    float *ckey = malloc((size_t)a->n * sizeof(float));
    int32_t *cidx = malloc((size_t)a->n * sizeof(int32_t));
    /* chunk q of a row is [chunks[q + 1], chunks[q + 2]), chunks[0] = M: whole vectors per
     * chunk where the row has at least M of them (the last chunk takes the tail) */
    const int64_t n = a->n, M = 2 * (int64_t)a->k < n ? 2 * (int64_t)a->k : n, nv = n / VW;
    int64_t *chunks = malloc((size_t)(M + 2) * sizeof(int64_t));
    if (!ckey || !cidx || !chunks) {
        a->failed = 1;
        lo = hi;
    } else {
        chunks[0] = M;
        for (int64_t q = 0; q <= M; q++)
            chunks[q + 1] = q == M ? n : nv >= M ? nv * q / M * VW : n * q / M;
    }
    const float *bias = a->bias;
    for (int64_t r = lo; r < hi; r++) {
        int64_t *oi = a->out_idx + r * a->k;
        if (a->bf16) {
            const uint16_t *x = (const uint16_t *)a->x + r * a->ld;
            if (bias)
                topk_row_bf16b(x, bias, n, a->k, chunks + 1, key, idx, ckey, cidx);
            else
                topk_row_bf16(x, bias, n, a->k, chunks + 1, key, idx, ckey, cidx);
            for (int j = 0; j < a->k; j++) {
                oi[j] = idx[j];
                if (bias)
                    ((float *)a->vals)[r * a->k + j] = BFB_S(idx[j]);
                else
                    ((uint16_t *)a->vals)[r * a->k + j] = x[idx[j]];
            }
        } else {
            const float *x = (const float *)a->x + r * a->ld;
            if (bias)
                topk_row_f32b(x, bias, n, a->k, chunks + 1, key, idx, ckey, cidx);
            else
                topk_row_f32(x, bias, n, a->k, chunks + 1, key, idx, ckey, cidx);
            float *ov = (float *)a->vals + r * a->k;
            for (int j = 0; j < a->k; j++) {
                oi[j] = idx[j];
                ov[j] = bias ? F32B_S(idx[j]) : x[idx[j]];
            }
        }
    }
    free(ckey);
    free(cidx);
    free(chunks);
}

/* rows x n (row stride ld elements), plus bias [n] if not NULL -> the k largest of each row, in
 * no particular order; their values in the input's dtype, or float32 (x + bias) with a bias.
 * Returns 0; -1 if k or n is out of range (1 <= k <= min(n, 4096), n < 2^31); -2 if out of
 * memory. */
int lms_topk(const void *x, const float *bias, int bf16, int64_t rows, int64_t n, int64_t ld,
             int k, void *vals, int64_t *out_idx, int nthreads) {
    if (k < 1 || k > n || k > 4096 || n > INT32_MAX) return -1;
    topk_args a = {x, bias, bf16, n, ld, k, vals, out_idx, 0};
    parallel(nthreads, rows, NULL, topk_range, &a);
    return a.failed ? -2 : 0;
}

/* ------------------------------------------------------- sparse products */

/* entries e = b * k + j of indices [rows, k] ordered by latent (stable): order[starts[c] ..
 * starts[c + 1]) are the entries of latent c. counts is scratch of n_lat + 1. Returns -1 if an
 * index is out of [0, n_lat). */
int lms_col_sort(const int64_t *indices, int64_t nnz, int64_t n_lat, int64_t *starts,
                 int32_t *order) {
    memset(starts, 0, (size_t)(n_lat + 1) * sizeof(int64_t));
    for (int64_t e = 0; e < nnz; e++) {
        int64_t c = indices[e];
        if (c < 0 || c >= n_lat) return -1;
        starts[c + 1]++;
    }
    for (int64_t c = 0; c < n_lat; c++) starts[c + 1] += starts[c];
    /* place with a moving cursor per latent: starts[c] is advanced, then restored */
    for (int64_t e = 0; e < nnz; e++) order[starts[indices[e]]++] = (int32_t)e;
    for (int64_t c = n_lat; c > 0; c--) starts[c] = starts[c - 1];
    starts[0] = 0;
    return 0;
}

typedef struct {
    const int32_t *order;
    const int64_t *starts;
    const float *w;
    int k;
    const float *dense;
    int64_t d;
    float *out;
    volatile int failed;
} scatter_args;

#define TW 64 /* output floats held in registers while a latent's entries stream past */

/* Latents [lo, hi) of the output. The entries' weights and dense-row offsets are gathered once
 * into the latents' order; then the output is made in column tiles of TW floats, every latent
 * of the range per tile, so the dense tile being read ([rows, TW], 1 MB at 4,096 rows) stays in
 * this core's L2 while the range's entries stream past. */
static void scatter_range(void *p, int64_t lo, int64_t hi) {
    scatter_args *a = (scatter_args *)p;
    const int64_t d = a->d, e0 = a->starts[lo], n_e = a->starts[hi] - e0;
    int64_t *offs = malloc((size_t)(n_e + 1) * sizeof(int64_t));
    float *ws = malloc((size_t)(n_e + 1) * sizeof(float));
    if (!offs || !ws) {
        a->failed = 1;
        hi = lo;
    }
    for (int64_t e = 0; e < n_e && hi > lo; e++) {
        const int32_t ent = a->order[e0 + e];
        ws[e] = a->w[ent];
        offs[e] = (int64_t)(ent / a->k) * d;
    }
    int64_t t0 = 0;
    for (; t0 + TW <= d; t0 += TW) {
        const float *restrict dt = a->dense + t0;
        for (int64_t c = lo; c < hi; c++) {
            /* four 16-float vectors in registers (GCC vector extensions: the compiler had
             * vectorized the entry loop with gathers instead) */
            v16f acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
            for (int64_t e = a->starts[c] - e0; e < a->starts[c + 1] - e0; e++) {
                const float wv = ws[e];
                const v16f *r = (const v16f *)(dt + offs[e]);
                acc0 += wv * r[0];
                acc1 += wv * r[1];
                acc2 += wv * r[2];
                acc3 += wv * r[3];
            }
            v16f *o = (v16f *)(a->out + c * d + t0);
            o[0] = acc0;
            o[1] = acc1;
            o[2] = acc2;
            o[3] = acc3;
        }
    }
    for (int64_t c = lo; c < hi && t0 < d; c++)
        for (int64_t t = t0; t < d; t++) {
            float acc = 0.0f;
            for (int64_t e = a->starts[c] - e0; e < a->starts[c + 1] - e0; e++)
                acc += ws[e] * a->dense[offs[e] + t];
            a->out[c * d + t] = acc;
        }
    free(offs);
    free(ws);
}

/* out [n_lat, d] = S^T @ dense, S [rows, n_lat] the code with S[b, indices[b, j]] = w[b, j]
 * (entries sorted by lms_col_sort), dense [rows, d] float32. Duplicate entries add. Returns 0,
 * or -2 if out of memory. */
int lms_scatter_t(const int32_t *order, const int64_t *starts, int64_t n_lat, const float *w,
                  int k, const float *dense, int64_t d, float *out, int nthreads) {
    scatter_args a = {order, starts, w, k, dense, d, out, 0};
    if (nthreads > MAXT) nthreads = MAXT;
    if (nthreads < 1) nthreads = 1;
    /* split latents so each thread gets about the same number of entries (plus rows to zero) */
    int64_t bounds[MAXT + 1];
    const int64_t nnz = starts[n_lat];
    bounds[0] = 0;
    int64_t c = 0;
    for (int i = 1; i < nthreads; i++) {
        const int64_t want = (nnz + n_lat) * i / nthreads;
        while (c < n_lat && starts[c] + c < want) c++;
        bounds[i] = c;
    }
    bounds[nthreads] = n_lat;
    parallel(nthreads, n_lat, bounds, scatter_range, &a);
    return a.failed ? -2 : 0;
}

typedef struct {
    const int64_t *indices;
    int k;
    const float *g;
    const float *W;
    int64_t d;
    float *out;
} rowdot_args;

static void rowdot_range(void *p, int64_t lo, int64_t hi) {
    rowdot_args *a = (rowdot_args *)p;
    const int64_t d = a->d, dv = d / 64 * 64;
    for (int64_t b = lo; b < hi; b++) {
        const float *gb = a->g + b * d;
        for (int j = 0; j < a->k; j++) {
            const float *wr = a->W + a->indices[b * a->k + j] * d;
            v16f acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
            for (int64_t t = 0; t < dv; t += 64) {
                const v16f *x = (const v16f *)(gb + t), *y = (const v16f *)(wr + t);
                acc0 += x[0] * y[0];
                acc1 += x[1] * y[1];
                acc2 += x[2] * y[2];
                acc3 += x[3] * y[3];
            }
            const v16f acc = (acc0 + acc1) + (acc2 + acc3);
            float s = 0.0f;
            for (int u = 0; u < 16; u++) s += acc[u];
            for (int64_t t = dv; t < d; t++) s += gb[t] * wr[t];
            a->out[b * a->k + j] = s;
        }
    }
}

/* out[b, j] = <g[b], W[indices[b, j]]>: g [rows, d], W [n_lat, d], float32 */
void lms_rowdot(const int64_t *indices, int64_t rows, int k, const float *g, const float *W,
                int64_t d, float *out, int nthreads) {
    rowdot_args a = {indices, k, g, W, d, out};
    parallel(nthreads, rows, NULL, rowdot_range, &a);
}

/* ------------------------------------------------- decoder row maintenance */

typedef struct {
    float *W;
    float *g;
    int64_t d;
} rows_args;

static inline float dot16(const float *restrict a, const float *restrict b, int64_t d) {
    float acc[16] = {0};
    int64_t t = 0;
    for (; t + 16 <= d; t += 16)
        for (int u = 0; u < 16; u++) acc[u] += a[t + u] * b[t + u];
    float s = 0.0f;
    for (int u = 0; u < 16; u++) s += acc[u];
    for (; t < d; t++) s += a[t] * b[t];
    return s;
}

static void remove_parallel_range(void *p, int64_t lo, int64_t hi) {
    rows_args *a = (rows_args *)p;
    const int64_t d = a->d;
    for (int64_t r = lo; r < hi; r++) {
        const float *restrict w = a->W + r * d;
        float *restrict g = a->g + r * d;
        float nrm = sqrtf(dot16(w, w, d));
        nrm = nrm > 1e-8f ? nrm : 1e-8f;
        const float c = dot16(g, w, d) / (nrm * nrm);
        for (int64_t t = 0; t < d; t++) g[t] -= c * w[t];
    }
}

/* g[r] -= <g[r], w_r> w_r / max(|w_r|, 1e-8)^2 for each row r of W, g [rows, d] (Gao et al.
 * 2024 App. A.4: the decoder gradient without its component along each row) */
void lms_remove_parallel(const float *W, float *g, int64_t rows, int64_t d, int nthreads) {
    rows_args a = {(float *)W, g, d};
    parallel(nthreads, rows, NULL, remove_parallel_range, &a);
}

static void normalize_range(void *p, int64_t lo, int64_t hi) {
    rows_args *a = (rows_args *)p;
    const int64_t d = a->d;
    for (int64_t r = lo; r < hi; r++) {
        float *restrict w = a->W + r * d;
        float nrm = sqrtf(dot16(w, w, d));
        nrm = nrm > 1e-8f ? nrm : 1e-8f;
        for (int64_t t = 0; t < d; t++) w[t] /= nrm;
    }
}

/* W[r] /= max(|W[r]|, 1e-8) for each row of W [rows, d] */
void lms_normalize_rows(float *W, int64_t rows, int64_t d, int nthreads) {
    rows_args a = {W, NULL, d};
    parallel(nthreads, rows, NULL, normalize_range, &a);
}
