/* pylstm's own worker threads: a tiny persistent pool for splitting one
 * kernel call (a time step, a GEMM) across cores.
 *
 * No OpenMP: bundling libgomp would raise the wheels' manylinux tag. Workers
 * are started with CPython's PyThread_start_new_thread rather than
 * pthread_create, and only pthread functions that glibc has had in libc
 * since 2.2.5 are used (mutex, condition variable, atfork): glibc 2.34 gave
 * pthread_create and pthread_once new symbol versions, which would tie the
 * wheels to glibc >= 2.34. Work is split so that each output element is computed by
 * exactly one thread in the same order as with one thread, so results are
 * bitwise identical at any thread count.
 *
 * Workers spin briefly between regions (a time loop issues one region per
 * step, microseconds apart), then sleep on a condition variable. One region
 * runs at a time: a call that finds the pool busy (another Python thread is
 * inside pylstm) runs on its own thread instead of waiting.
 */
#ifndef PYLSTM_THREADS_H
#define PYLSTM_THREADS_H

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <unistd.h>

#define PYLSTM_MAX_THREADS 64
/* pause-loop iterations a worker spins before sleeping (~tens of microseconds) */
#define PYLSTM_SPIN 20000
/* pause-loop iterations before a waiting thread starts yielding its core: on a
 * busy machine the thread it waits for may be descheduled, and spinning would
 * only keep it off the core */
#define PYLSTM_SPIN_BEFORE_YIELD 2000

typedef void (*pylstm_task)(void *context, int part, int n_parts);

static struct {
    pthread_mutex_t lock;        /* guards sleeping and the worker count */
    pthread_cond_t wake;
    atomic_int busy;             /* 1 while a region runs */
    atomic_long generation;      /* bumped to start a region */
    atomic_int done;             /* workers finished with the current region */
    int n_workers;               /* started so far (threads beyond the caller) */
    int n_parts;                 /* parts of the current region */
    pylstm_task task;
    void *context;
    int wanted;                  /* pylstm.set_num_threads */
    pid_t owner;                 /* process that started the workers */
} pylstm_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, 0, 1, 0};

/* What a worker is started with. `seen` is the generation before the region
 * its creator is about to start: read later, the worker could miss it. */
typedef struct { int index; long seen; } pylstm_worker_start;

/* CPython's thread start (Python.h), declared here so this header stands alone. */
unsigned long PyThread_start_new_thread(void (*func)(void *), void *arg);

static void pylstm_worker(void *arg) {
    pylstm_worker_start start = *(pylstm_worker_start *)arg;
    free(arg);
    int index = start.index;     /* 1 .. n_workers; the caller is part 0 */
    long seen = start.seen;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pylstm_pool.generation, memory_order_acquire) == seen) {
            if (++spins < PYLSTM_SPIN) {
                if (spins > PYLSTM_SPIN_BEFORE_YIELD) sched_yield();
#if defined(__x86_64__)
                else __builtin_ia32_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&pylstm_pool.lock);
            while (atomic_load(&pylstm_pool.generation) == seen)
                pthread_cond_wait(&pylstm_pool.wake, &pylstm_pool.lock);
            pthread_mutex_unlock(&pylstm_pool.lock);
        }
        seen = atomic_load(&pylstm_pool.generation);
        if (index < pylstm_pool.n_parts)
            pylstm_pool.task(pylstm_pool.context, index, pylstm_pool.n_parts);
        atomic_fetch_add_explicit(&pylstm_pool.done, 1, memory_order_release);
    }
}

/* A child of fork() has none of the workers, and the lock may have been held
 * by a thread that does not exist there: start afresh. */
static void pylstm_pool_after_fork(void) {
    pthread_mutex_init(&pylstm_pool.lock, NULL);
    pthread_cond_init(&pylstm_pool.wake, NULL);
    atomic_store(&pylstm_pool.busy, 0);
    pylstm_pool.n_workers = 0;
    pylstm_pool.owner = getpid();
}

static atomic_int pylstm_pool_registered;

/* Called with the pool held (busy), so at most one caller registers. */
static void pylstm_pool_register(void) {
    if (!atomic_exchange(&pylstm_pool_registered, 1))
        pthread_atfork(NULL, NULL, pylstm_pool_after_fork);
}

static void pylstm_set_num_threads(int n) {
    if (n < 1) n = 1;
    if (n > PYLSTM_MAX_THREADS) n = PYLSTM_MAX_THREADS;
    pylstm_pool.wanted = n;
}

static int pylstm_get_num_threads(void) { return pylstm_pool.wanted; }

/* Run task(context, part, n_parts) for part in [0, n_parts), n_parts <= the
 * thread setting and <= max_parts; the caller runs part 0. Returns n_parts. */
static int pylstm_parallel(int max_parts, pylstm_task task, void *context) {
    int n = pylstm_pool.wanted < max_parts ? pylstm_pool.wanted : max_parts;
    int expected = 0;
    if (n <= 1 || !atomic_compare_exchange_strong(&pylstm_pool.busy, &expected, 1)) {
        task(context, 0, 1);
        return 1;
    }
    pylstm_pool_register();
    if (pylstm_pool.owner != getpid()) {  /* first use, or a child after fork(): no workers */
        pylstm_pool.n_workers = 0;
        pylstm_pool.owner = getpid();
    }
    while (pylstm_pool.n_workers < n - 1) {
        pylstm_worker_start *start = malloc(sizeof *start);
        if (start == NULL) break;
        start->index = pylstm_pool.n_workers + 1;
        start->seen = atomic_load(&pylstm_pool.generation);
        /* (unsigned long)-1 is CPython's failure value */
        if (PyThread_start_new_thread(pylstm_worker, start) == (unsigned long)-1) {
            free(start);
            break;
        }
        pylstm_pool.n_workers++;
    }
    if (n > pylstm_pool.n_workers + 1) n = pylstm_pool.n_workers + 1;
    int workers = pylstm_pool.n_workers;
    pylstm_pool.task = task;
    pylstm_pool.context = context;
    pylstm_pool.n_parts = n;
    atomic_store(&pylstm_pool.done, 0);
    pthread_mutex_lock(&pylstm_pool.lock);
    atomic_fetch_add_explicit(&pylstm_pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pylstm_pool.wake);
    pthread_mutex_unlock(&pylstm_pool.lock);
    task(context, 0, n);
    /* every worker acknowledges every region, even with no part of it */
    for (long spins = 0;
         atomic_load_explicit(&pylstm_pool.done, memory_order_acquire) < workers; ++spins) {
        if (spins > PYLSTM_SPIN_BEFORE_YIELD) sched_yield();
#if defined(__x86_64__)
        else __builtin_ia32_pause();
#endif
    }
    atomic_store(&pylstm_pool.busy, 0);
    return n;
}

#endif /* PYLSTM_THREADS_H */
