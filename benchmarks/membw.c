/* Memory read bandwidth: T threads (OpenMP) sum disjoint slices of a buffer much larger than
 * the last-level cache (default 1 GiB; this VM reports 260 MiB of L3).
 *
 *   gcc -O3 -march=native -fopenmp membw.c -o membw
 *   membw [-t THREADS] [-m MIB] [-p PASSES]     one line per "m" read on stdin (server mode):
 *       {"gbs": median, "best": max, "passes": [...]}         EOF or "q" ends.
 *   membw ... --once                            one measurement, then exit.
 * The buffer stays allocated (and its pages touched) between measurements, so each one costs
 * only PASSES reads of the buffer (~0.1 s).
 */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static volatile uint64_t sink;

static double pass(const uint64_t *buf, size_t n) {
    double t = now();
    uint64_t total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (size_t i = 0; i < n; i++) total += buf[i];
    sink = total;
    return (double)(n * sizeof(uint64_t)) / (now() - t) / 1e9;
}

static void measure(const uint64_t *buf, size_t n, int passes) {
    double r[64];
    if (passes > 64) passes = 64;
    for (int i = 0; i < passes; i++) r[i] = pass(buf, n);
    double s[64];
    memcpy(s, r, sizeof(double) * passes);
    qsort(s, passes, sizeof(double), cmp);
    printf("{\"gbs\": %.2f, \"best\": %.2f, \"threads\": %d, \"passes\": [", s[passes / 2], s[passes - 1],
           omp_get_max_threads());
    for (int i = 0; i < passes; i++) printf("%s%.2f", i ? ", " : "", r[i]);
    printf("]}\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    int threads = 0, mib = 1024, passes = 5, once = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) mib = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-p") && i + 1 < argc) passes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--once")) once = 1;
        else { fprintf(stderr, "usage: membw [-t T] [-m MIB] [-p PASSES] [--once]\n"); return 2; }
    }
    if (threads > 0) omp_set_num_threads(threads);
    size_t n = (size_t)mib * 1024 * 1024 / sizeof(uint64_t);
    uint64_t *buf = aligned_alloc(64, n * sizeof(uint64_t));
    if (!buf) { fprintf(stderr, "membw: cannot allocate %d MiB\n", mib); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i;   /* first touch by the thread that reads it */
    pass(buf, n);                                 /* warm */
    if (once) { measure(buf, n, passes); return 0; }
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'q') break;
        measure(buf, n, passes);
    }
    free(buf);
    return 0;
}
