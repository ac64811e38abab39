/* The CPU's fused multiply-add peak in GFLOP/s, AVX2 and AVX-512, on one thread and on two:
 * twelve independent accumulator registers, each updated by one FMA per step, so that
 * nothing but the FMA units limits the loop. The ceiling any convolution kernel (robustlens's
 * or oneDNN's) meets on the machine; the README's performance section compares against it.
 *
 *     cc -O3 -o fma_peak bench/fma_peak.c -lpthread && ./fma_peak
 *
 * (x86-64, GCC or Clang; without AVX-512F only the AVX2 figures.) */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#define STEPS 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx2,fma"))) static float run256(void) {
    __m256 a[12];
    __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long k = 0; k < STEPS / 12; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
    float s = 0, t[8];
    for (int i = 0; i < 12; i++) {
        _mm256_storeu_ps(t, a[i]);
        s += t[0];
    }
    return s;
}

__attribute__((target("avx512f"))) static float run512(void) {
    __m512 a[12];
    __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.001f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < STEPS / 12; k++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    float s = 0, t[16];
    for (int i = 0; i < 12; i++) {
        _mm512_storeu_ps(t, a[i]);
        s += t[0];
    }
    return s;
}

static void *t256(void *out) {
    *(float *)out = run256();
    return 0;
}

static void *t512(void *out) {
    *(float *)out = run512();
    return 0;
}

/* GFLOP/s of `threads` copies of `f` (lanes floats per FMA, two flops each). */
static double measure(void *(*f)(void *), int threads, int lanes) {
    pthread_t th[2];
    float out[2];
    double t = now();
    for (int i = 0; i < threads; i++) pthread_create(&th[i], 0, f, &out[i]);
    for (int i = 0; i < threads; i++) pthread_join(th[i], 0);
    return threads * (double)STEPS * lanes * 2 / (now() - t) / 1e9;
}

int main(void) {
    int wide = __builtin_cpu_supports("avx512f");
    for (int round = 1; round <= 3; round++) {
        printf("round %d: AVX2 %.1f / %.1f GFLOP/s (1 / 2 threads)", round, measure(t256, 1, 8),
               measure(t256, 2, 8));
        if (wide)
            printf(", AVX-512 %.1f / %.1f", measure(t512, 1, 16), measure(t512, 2, 16));
        printf("\n");
    }
    return 0;
}
