/* Cost of handing one region to pylstm's thread pool (src/_threads.h), with
 * no Python around it: regions per second with 2 threads against 1, for an
 * empty task and one of ~0.5 us per part.
 *
 *     cc -O2 -pthread bench/pool_handoff.c -o /tmp/pool_handoff && /tmp/pool_handoff
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* the pool starts its workers through CPython; plain pthreads here */
static unsigned long PyThread_start_new_thread(void (*run)(void *), void *arg) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, (void *(*)(void *))run, arg)) return (unsigned long)-1;
    pthread_detach(thread);
    return 1;
}
#include "../src/_threads.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile float sink[PYLSTM_MAX_THREADS];
static int work;

static void task(void *context, int part, int n_parts) {
    float sum = 0;
    for (int i = 0; i < work; ++i) sum += i * 0.5f;
    sink[part] = sum;
}

static double ns_per_region(int threads, int regions) {
    pylstm_set_num_threads(threads);
    double start = now();
    for (int r = 0; r < regions; ++r) pylstm_parallel(2, task, NULL);
    return (now() - start) / regions * 1e9;
}

int main(void) {
    int sizes[] = {0, 1000};
    for (int s = 0; s < 2; ++s) {
        work = sizes[s];
        ns_per_region(2, 10000);  /* start the worker */
        for (int repeat = 0; repeat < 3; ++repeat)
            printf("task of %4d iterations: 2 threads %4.0f ns per region, 1 thread %4.0f ns\n",
                   work, ns_per_region(2, 200000), ns_per_region(1, 200000));
    }
    return 0;
}
