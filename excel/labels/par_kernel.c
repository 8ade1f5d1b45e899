/* PAR on the CPU in float32 (docs/method.md §5): the neighbour weights and the propagation
 * iterations as single passes over memory, one image row at a time.
 *
 * Layouts (all C-contiguous float32):
 *   image    B×C×Hp×Wp  replicate-padded by `margin` (Hp = H + 2·margin, Wp = W + 2·margin)
 *   weights  B×H×M×W    affinity to each of the M neighbours (dy[m], dx[m]); a row's weights are contiguous
 *   state    B×K×Hp×Wp  replicate-padded label maps; two buffers alternate across the iterations
 *   scratch  per-thread work rows for the weights, `threads` × (3 + C)·W floats
 *
 * The inner loops run along x so that the compiler vectorises them. Built and loaded by
 * excel/labels/par_native.py; the Python forms in excel/labels/par.py are the reference.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
/* Products of tiny weights and label values fall below FLT_MIN; x86 CPUs handle such subnormal numbers
 * in slow microcode (PAR took twice as long on real label maps), so each thread flushes them to zero
 * inside the kernels and restores its floating-point state on the way out. */
#if defined(__SSE2__)
#include <xmmintrin.h>
#define FLUSH_SUBNORMALS const unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040u);
#define RESTORE_FP_STATE _mm_setcsr(saved_csr);
#else
#define FLUSH_SUBNORMALS
#define RESTORE_FP_STATE
#endif
#ifdef _OPENMP
#include <omp.h>
#define THREAD_INDEX omp_get_thread_num()
#else
#define THREAD_INDEX 0
#endif

/* Vectors of LANES floats (GCC/Clang vector extension; split into the widest registers available). */
#define LANES 16
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t ivec __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vec load(const float *p) {
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* exp(x) for x <= 0, elementwise: Cody–Waite reduction and a degree-6 polynomial (about 1 ulp). */
static inline vec exp_nonpositive(vec x) {
    const vec lowest = x * 0.0f - 87.0f, shift = x * 0.0f + 12582912.0f;  /* 1.5·2^23 rounds to integers */
    const ivec below = x < lowest;  /* all bits set where x < lowest */
    x = (vec)(((ivec)lowest & below) | ((ivec)x & ~below));
    vec n = (x * 1.44269504088896341f + shift) - shift;
    vec r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vec p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
    return p * (vec)bits;
}

/* Neighbour weights: softmax over m of −mean_c (E_cm / ((std_c + eps)·T))², E_cm = I_c(nb m) − I_c(centre),
 * std_c the unbiased spread of E_c over the neighbours, plus position[m]. */
void par_affinity_f32(const float *image, float *weights, int64_t batch, int64_t channels, int64_t height,
                      int64_t width, int64_t margin, int64_t count, const int64_t *dy, const int64_t *dx,
                      float temperature, float eps, const float *position, float *scratch, int threads) {
    const int64_t padded_h = height + 2 * margin, padded_w = width + 2 * margin;
    const int64_t plane = padded_h * padded_w, rows = batch * height;
#pragma omp parallel num_threads(threads)
    {
        FLUSH_SUBNORMALS
        float *sum = scratch + THREAD_INDEX * (3 + channels) * width;
        float *square = sum + width, *peak = square + width, *scale = peak + width;
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t b = row / height, y = row % height;
            float *out = weights + row * count * width;
            for (int64_t c = 0; c < channels; ++c) {
                const float *centre = image + (b * channels + c) * plane + (y + margin) * padded_w + margin;
                for (int64_t x = 0; x < width; ++x) sum[x] = square[x] = 0.0f;
                for (int64_t m = 0; m < count; ++m) {
                    const float *nb = centre + dy[m] * padded_w + dx[m];
                    for (int64_t x = 0; x < width; ++x) {
                        float e = nb[x] - centre[x];
                        sum[x] += e;
                        square[x] += e * e;
                    }
                }
                float *s = scale + c * width;
                for (int64_t x = 0; x < width; ++x) {
                    float variance = (square[x] - sum[x] * sum[x] / (float)count) / (float)(count - 1);
                    float spread = (sqrtf(variance > 0.0f ? variance : 0.0f) + eps) * temperature;
                    s[x] = 1.0f / (spread * spread * -(float)channels);
                }
            }
            for (int64_t x = 0; x < width; ++x) peak[x] = -INFINITY;
            for (int64_t m = 0; m < count; ++m) {
                float *o = out + m * width;
                for (int64_t c = 0; c < channels; ++c) {
                    const float *centre = image + (b * channels + c) * plane + (y + margin) * padded_w + margin;
                    const float *nb = centre + dy[m] * padded_w + dx[m];
                    const float *s = scale + c * width;
                    if (c == 0) {
                        for (int64_t x = 0; x < width; ++x) o[x] = (nb[x] - centre[x]) * (nb[x] - centre[x]) * s[x];
                    } else {
                        for (int64_t x = 0; x < width; ++x) o[x] += (nb[x] - centre[x]) * (nb[x] - centre[x]) * s[x];
                    }
                }
                for (int64_t x = 0; x < width; ++x) peak[x] = o[x] > peak[x] ? o[x] : peak[x];
            }
            for (int64_t x = 0; x < width; ++x) sum[x] = 0.0f;
            for (int64_t m = 0; m < count; ++m) {
                float *o = out + m * width;
                int64_t x = 0;
                for (; x + LANES <= width; x += LANES) {
                    vec e = exp_nonpositive(load(o + x) - load(peak + x));
                    memcpy(o + x, &e, sizeof e);
                }
                if (x < width) {  /* the last partial vector, through a full-width copy */
                    float tail[LANES] = {0};
                    for (int64_t i = x; i < width; ++i) tail[i - x] = o[i] - peak[i];
                    vec e = exp_nonpositive(load(tail));
                    memcpy(o + x, &e, sizeof(float) * (width - x));
                }
                for (x = 0; x < width; ++x) sum[x] += o[x];
            }
            for (int64_t m = 0; m < count; ++m) {
                float *o = out + m * width;
                const float add = position[m];
                for (int64_t x = 0; x < width; ++x) o[x] = o[x] / sum[x] + add;
            }
        }
        RESTORE_FP_STATE
    }
}

/* One output row of up to MAPS maps (MAPS fixed at compile time, so the sums stay in registers):
 * out[k][x] = Σ_m w[m][x] · nb_m[k][x] for x in [0, width), the sum taken in neighbour order. */
#define DEFINE_ROW(MAPS)                                                                                    \
    static void row_##MAPS(const float *w, const float *centre, const int64_t *offset, int64_t count,      \
                           int64_t width, int64_t plane, float *out) {                   \
        int64_t x = 0;                                                                                      \
        for (; x + LANES <= width; x += LANES) {                                                            \
            vec acc[MAPS] = {0};                                                                            \
            for (int64_t m = 0; m < count; ++m) {                                                           \
                const vec weight = load(w + m * width + x);                                                 \
                const float *nb = centre + offset[m] + x;                                                   \
                for (int k = 0; k < MAPS; ++k) acc[k] += weight * load(nb + k * plane);                     \
            }                                                                                               \
            for (int k = 0; k < MAPS; ++k) memcpy(out + k * plane + x, &acc[k], sizeof(vec));          \
        }                                                                                                   \
        for (; x < width; ++x) {                                                                            \
            float acc[MAPS] = {0};                                                                          \
            for (int64_t m = 0; m < count; ++m) {                                                           \
                const float weight = w[m * width + x];                                                      \
                const float *nb = centre + offset[m] + x;                                                   \
                for (int k = 0; k < MAPS; ++k) acc[k] += weight * nb[k * plane];                            \
            }                                                                                               \
            for (int k = 0; k < MAPS; ++k) out[k * plane + x] = acc[k];                                 \
        }                                                                                                   \
    }
DEFINE_ROW(1)
DEFINE_ROW(2)
DEFINE_ROW(3)
DEFINE_ROW(4)

/* One round for output row y of one image: the maps four at a time, then the row's left and right margins. */
static void propagate_row(const float *weights, const float *src, float *dst, int64_t y, int64_t maps,
                          int64_t height, int64_t width, int64_t margin, int64_t count, const int64_t *offset) {
    const int64_t padded_w = width + 2 * margin, plane = (height + 2 * margin) * padded_w;
    const float *w = weights + y * count * width;
    for (int64_t k = 0; k < maps; k += 4) {
        const int64_t at = k * plane + (y + margin) * padded_w + margin;
        switch (maps - k < 4 ? maps - k : 4) {
            case 1: row_1(w, src + at, offset, count, width, plane, dst + at); break;
            case 2: row_2(w, src + at, offset, count, width, plane, dst + at); break;
            case 3: row_3(w, src + at, offset, count, width, plane, dst + at); break;
            default: row_4(w, src + at, offset, count, width, plane, dst + at); break;
        }
    }
    for (int64_t k = 0; k < maps; ++k) {
        float *line = dst + k * plane + (y + margin) * padded_w;
        for (int64_t x = 0; x < margin; ++x) {
            line[x] = line[margin];
            line[margin + width + x] = line[margin + width - 1];
        }
    }
}

/* Copy the first and last interior rows of one padded map into its top and bottom margins. */
static void pad_rows(float *map, int64_t height, int64_t margin, int64_t padded_w) {
    const float *first = map + margin * padded_w, *last = map + (margin + height - 1) * padded_w;
    for (int64_t r = 0; r < margin; ++r) {
        memcpy(map + r * padded_w, first, sizeof(float) * padded_w);
        memcpy(map + (margin + height + r) * padded_w, last, sizeof(float) * padded_w);
    }
}

/* `iterations` rounds of state ← Σ_m weights[m] · state(shifted by offset[m]), replicate-padded after each
 * round; offset[m] = dy[m]·Wp + dx[m]. One image at a time, so that its weights stay in cache across the
 * rounds: whole images per thread when they divide evenly among the threads (no synchronisation), else the
 * rows of each image shared among the threads. Only the first real[b] maps of image b are computed (the
 * others are zero padding and stay as they are). `state` holds the padded input; returns 0 when the result
 * is in `state`, 1 when in `spare`. */
int par_propagate_f32(const float *weights, float *state, float *spare, int64_t batch, int64_t maps,
                      const int64_t *real, int64_t height, int64_t width, int64_t margin, int64_t count,
                      const int64_t *offset, int64_t iterations, int threads) {
    const int64_t padded_w = width + 2 * margin, plane = (height + 2 * margin) * padded_w;
    const int64_t image_weights = height * count * width;
    if (batch % threads == 0) {
#pragma omp parallel num_threads(threads)
        {
            FLUSH_SUBNORMALS
#pragma omp for schedule(dynamic, 1)
            for (int64_t b = 0; b < batch; ++b) {
                for (int64_t it = 0; it < iterations; ++it) {
                    const float *src = (it % 2 ? spare : state) + b * maps * plane;
                    float *dst = (it % 2 ? state : spare) + b * maps * plane;
                    for (int64_t y = 0; y < height; ++y)
                        propagate_row(weights + b * image_weights, src, dst, y, real[b], height, width, margin,
                                      count, offset);
                    for (int64_t k = 0; k < real[b]; ++k) pad_rows(dst + k * plane, height, margin, padded_w);
                }
            }
            RESTORE_FP_STATE
        }
        return (int)(iterations % 2);
    }
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t it = 0; it < iterations; ++it) {
            const float *src = (it % 2 ? spare : state) + b * maps * plane;
            float *dst = (it % 2 ? state : spare) + b * maps * plane;
#pragma omp parallel num_threads(threads)
            {
                FLUSH_SUBNORMALS
#pragma omp for schedule(static)
                for (int64_t y = 0; y < height; ++y)
                    propagate_row(weights + b * image_weights, src, dst, y, real[b], height, width, margin, count,
                                  offset);
#pragma omp for schedule(static)
                for (int64_t k = 0; k < real[b]; ++k) pad_rows(dst + k * plane, height, margin, padded_w);
                RESTORE_FP_STATE
            }
        }
    }
    return (int)(iterations % 2);
}
