/* pylstm's own worker threads: a tiny persistent pool for splitting one
 * kernel call (a time step, a GEMM) across cores.
 *
 * No OpenMP: bundling libgomp would raise the wheels' manylinux tag. Workers
 * are started with CPython's PyThread_start_new_thread rather than
 * pthread_create, and only pthread functions that glibc has had in libc
 * since 2.2.5 are used (mutex, condition variable, atfork): glibc 2.34 gave
 * pthread_create and pthread_once new symbol versions, which would tie the
 * wheels to glibc >= 2.34. Work is split so that each output element is computed by
 * exactly one part in the same order as with one thread, so results are
 * bitwise identical at any thread count, whichever thread runs a part.
 *
 * A region's parts are claimed, not assigned: the caller runs part 0, then
 * claims whatever parts no worker has taken yet. A worker that the OS has
 * descheduled (another process, or another library's spinning threads, on
 * its core) therefore costs the region its share of the parallelism, not a
 * wait of a whole time slice on every step.
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
#include <string.h>

#define PYLSTM_MAX_THREADS 64
/* pause-loop iterations a worker spins before sleeping (~tens of microseconds) */
#define PYLSTM_SPIN 20000
/* pause-loop iterations before a waiting thread starts yielding its core: on a
 * busy machine the thread it waits for may be descheduled, and spinning would
 * only keep it off the core */
#define PYLSTM_SPIN_BEFORE_YIELD 2000

typedef void (*pylstm_task)(void *context, int part, int n_parts);

/* The claim word: generation << 32 | n_parts << 16 | next unclaimed part.
 * One atomic, so a thread that wins the compare-and-swap on it knows the
 * region is still running and its task and context are this region's. */
#define PYLSTM_CLAIM(generation, n_parts, next) \
    ((unsigned long)(generation) << 32 | (unsigned long)(n_parts) << 16 | (unsigned long)(next))
#define PYLSTM_CLAIM_GENERATION(word) ((unsigned long)(word) >> 32)
#define PYLSTM_CLAIM_PARTS(word) ((int)(((word) >> 16) & 0xffff))
#define PYLSTM_CLAIM_NEXT(word) ((int)((word) & 0xffff))

static struct {
    pthread_mutex_t lock;        /* guards sleeping and the worker count */
    pthread_cond_t wake;
    atomic_int busy;             /* 1 while a region runs */
    atomic_ulong claim;          /* PYLSTM_CLAIM(generation, n_parts, next part) */
    atomic_int finished;         /* parts of the current region completed */
    atomic_int sleepers;         /* workers waiting on `wake` */
    int n_workers;               /* started so far (threads beyond the caller) */
    pylstm_task task;
    void *context;
    int wanted;                  /* pylstm.set_num_threads */
    long taken_over;             /* parts beyond part 0 that callers ran (tests read it) */
} pylstm_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, 0, 1, 0};

/* Claim and run parts of region `generation` until none is left; returns how many. */
static int pylstm_pool_work(unsigned long generation) {
    int ran = 0;
    unsigned long word = atomic_load_explicit(&pylstm_pool.claim, memory_order_acquire);
    while (PYLSTM_CLAIM_GENERATION(word) == generation
           && PYLSTM_CLAIM_NEXT(word) < PYLSTM_CLAIM_PARTS(word)) {
        if (!atomic_compare_exchange_weak_explicit(&pylstm_pool.claim, &word, word + 1,
                                                   memory_order_acq_rel, memory_order_acquire))
            continue;  /* `word` now holds the current value */
        /* the region cannot end before this part finishes, so task and context are its own */
        pylstm_pool.task(pylstm_pool.context, PYLSTM_CLAIM_NEXT(word), PYLSTM_CLAIM_PARTS(word));
        atomic_fetch_add_explicit(&pylstm_pool.finished, 1, memory_order_release);
        word = atomic_load_explicit(&pylstm_pool.claim, memory_order_acquire);
        ++ran;
    }
    return ran;
}

static unsigned long pylstm_pool_generation(void) {
    return PYLSTM_CLAIM_GENERATION(atomic_load_explicit(&pylstm_pool.claim, memory_order_acquire));
}

static void pylstm_worker(void *arg) {
    unsigned long seen = *(unsigned long *)arg;  /* the generation before its first region */
    free(arg);
    for (;;) {
        int spins = 0;
        while (pylstm_pool_generation() == seen) {
            if (++spins < PYLSTM_SPIN) {
                if (spins > PYLSTM_SPIN_BEFORE_YIELD) sched_yield();
#if defined(__x86_64__)
                else __builtin_ia32_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&pylstm_pool.lock);
            /* sequentially consistent with the caller's publish-then-check */
            atomic_fetch_add(&pylstm_pool.sleepers, 1);
            while (PYLSTM_CLAIM_GENERATION(atomic_load(&pylstm_pool.claim)) == seen)
                pthread_cond_wait(&pylstm_pool.wake, &pylstm_pool.lock);
            atomic_fetch_sub(&pylstm_pool.sleepers, 1);
            pthread_mutex_unlock(&pylstm_pool.lock);
        }
        seen = pylstm_pool_generation();
        pylstm_pool_work(seen);
    }
}

/* A child of fork() has none of the workers, and the lock may have been held
 * by a thread that does not exist there: start afresh. */
static void pylstm_pool_after_fork(void) {
    pthread_mutex_init(&pylstm_pool.lock, NULL);
    pthread_cond_init(&pylstm_pool.wake, NULL);
    atomic_store(&pylstm_pool.busy, 0);
    atomic_store(&pylstm_pool.sleepers, 0);
    pylstm_pool.n_workers = 0;
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

static long pylstm_parts_taken_over(void) { return pylstm_pool.taken_over; }

/* Run task(context, part, n_parts) for part in [0, n_parts), n_parts <= the
 * thread setting and <= max_parts; the caller runs part 0 and any part no
 * worker has claimed by the time it is done. Returns n_parts. */
static int pylstm_parallel(int max_parts, pylstm_task task, void *context) {
    int n = pylstm_pool.wanted < max_parts ? pylstm_pool.wanted : max_parts;
    int expected = 0;
    if (n <= 1 || !atomic_compare_exchange_strong(&pylstm_pool.busy, &expected, 1)) {
        task(context, 0, 1);
        return 1;
    }
    /* before any worker starts: a child of fork() then always resets the pool
     * (no getpid() check here: it is a system call, and this runs every step) */
    pylstm_pool_register();
    unsigned long generation = pylstm_pool_generation();
    while (pylstm_pool.n_workers < n - 1) {
        unsigned long *seen = malloc(sizeof *seen);
        if (seen == NULL) break;
        *seen = generation;
        /* (unsigned long)-1 is CPython's failure value */
        if (PyThread_start_new_thread(pylstm_worker, seen) == (unsigned long)-1) {
            free(seen);
            break;
        }
        pylstm_pool.n_workers++;
    }
    if (n > pylstm_pool.n_workers + 1) n = pylstm_pool.n_workers + 1;
    pylstm_pool.task = task;
    pylstm_pool.context = context;
    atomic_store_explicit(&pylstm_pool.finished, 0, memory_order_relaxed);
    generation = (generation + 1) & 0xffffffffUL;
    /* publish with part 0 already the caller's; sequentially consistent, so a
     * worker about to sleep either sees it or is counted in `sleepers` */
    atomic_store(&pylstm_pool.claim, PYLSTM_CLAIM(generation, n, 1));
    if (atomic_load(&pylstm_pool.sleepers) > 0) {
        pthread_mutex_lock(&pylstm_pool.lock);
        pthread_cond_broadcast(&pylstm_pool.wake);
        pthread_mutex_unlock(&pylstm_pool.lock);
    }
    task(context, 0, n);
    atomic_fetch_add_explicit(&pylstm_pool.finished, 1, memory_order_release);
    pylstm_pool.taken_over += pylstm_pool_work(generation);
    /* parts claimed by workers and still running */
    for (long spins = 0;
         atomic_load_explicit(&pylstm_pool.finished, memory_order_acquire) < n; ++spins) {
        if (spins > PYLSTM_SPIN_BEFORE_YIELD) sched_yield();
#if defined(__x86_64__)
        else __builtin_ia32_pause();
#endif
    }
    atomic_store(&pylstm_pool.busy, 0);
    return n;
}

/* Per-part copies of a read-only operand that every part reads whole (the
 * step's panels or packed w_hh when parts take rows): part p > 0 reads its
 * own copy, part 0 the original. Two cores reading the same lines ran ~10%
 * slower than each reading lines of its own (mid at 2 threads: 8.4-8.6 ->
 * 7.6-7.8 ms with a copy for the second part), though both fit in L2.
 *
 * A copy is made by the thread that runs the part, at its first use in a
 * call, and kept while the call lasts: the kernel's entry points start a new
 * epoch (the original may then be new, or repacked in place), and a copy is
 * reused only within its epoch. Only the parts of the one running region use
 * them, so no two threads touch a copy at once. The buffers are kept for the
 * next call (at most one L2 budget's worth per part, see pylstm_row_parts). */
static atomic_long pylstm_replica_epoch;
static struct {
    const void *master;
    long bytes, epoch, capacity;
    void *copy;
} pylstm_replicas[PYLSTM_MAX_THREADS];

static void pylstm_new_replica_epoch(void) { atomic_fetch_add(&pylstm_replica_epoch, 1); }

/* Runs of steps whose rows were split across threads (tests read it). */
static atomic_long pylstm_row_runs;
static void pylstm_count_row_run(void) { atomic_fetch_add(&pylstm_row_runs, 1); }
static long pylstm_row_runs_so_far(void) { return atomic_load(&pylstm_row_runs); }

/* Part `part`'s copy of master[0:bytes] (master itself for part 0, or if out of memory). */
static const void *pylstm_replica(int part, const void *master, long bytes) {
    if (part <= 0 || part >= PYLSTM_MAX_THREADS || master == NULL || bytes <= 0) return master;
    long epoch = atomic_load(&pylstm_replica_epoch);
    __typeof__(pylstm_replicas[0]) *r = &pylstm_replicas[part];
    if (r->master == master && r->bytes == bytes && r->epoch == epoch) return r->copy;
    if (r->capacity < bytes) {
        free(r->copy);
        r->copy = NULL;
        r->capacity = 0;
        r->master = NULL;
        if (posix_memalign(&r->copy, 64, (size_t)bytes) != 0) {
            r->copy = NULL;
            return master;
        }
        r->capacity = bytes;
    }
    memcpy(r->copy, master, (size_t)bytes);
    r->master = master;
    r->bytes = bytes;
    r->epoch = epoch;
    return r->copy;
}

/* fn(context, begin, end) over [0, n) in contiguous ranges, one per part, for
 * work whose results do not depend on how it is split (data movement,
 * elementwise loops): at most one part per min_per_part items. */
typedef void (*pylstm_range_fn)(void *context, long begin, long end);
typedef struct { pylstm_range_fn fn; void *context; long n; } pylstm_range_job;

static void pylstm_range_part(void *context, int part, int n_parts) {
    const pylstm_range_job *job = context;
    job->fn(job->context, job->n * part / n_parts, job->n * (part + 1) / n_parts);
}

static void pylstm_parallel_range(long n, long min_per_part, pylstm_range_fn fn,
                                  void *context) {
    long max_parts = n / (min_per_part > 0 ? min_per_part : 1);
    pylstm_range_job job = {fn, context, n};
    if (max_parts > PYLSTM_MAX_THREADS) max_parts = PYLSTM_MAX_THREADS;
    pylstm_parallel(max_parts < 1 ? 1 : (int)max_parts, pylstm_range_part, &job);
}

#endif /* PYLSTM_THREADS_H */
