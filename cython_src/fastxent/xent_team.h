/*
 * The parallel loop of the runners: fx_run_items() hands fixed items (blocks of rows, chunks
 * of long rows) to a team of threads.
 *
 * Why not `#pragma omp parallel for schedule(dynamic)`: at the end of a parallel region every
 * thread waits for the others at a barrier, and OpenMP runtimes wait by spinning (libgomp for
 * about 300,000 iterations by default, libomp for 200 ms).  When another process keeps a core
 * busy, a thread of the team can be descheduled; the threads waiting for it then spin on the
 * core it could have run on, and a call on two threads took twice as long as on one.  The
 * runtimes' wait policy (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME) is read once per
 * process and applies to every library in it, so fastxent does not touch it.  Instead:
 *
 *   - The threads claim items from a shared counter, so a thread that runs late simply
 *     takes fewer items; the calling thread (the master) works from the first item on.
 *   - When the items run out, a thread waits for the others itself before entering the
 *     region's closing barrier: it spins for about two of its own item times (a running
 *     partner finishes its item within one), then sleeps in short naps, which frees its core
 *     for the thread it is waiting for.
 *   - The workers enter the barrier only once every item is finished, and the master only
 *     once every worker has said it is entering: the master arrives last, so the barrier
 *     never holds it.
 *
 * A worker that is descheduled before it claims an item costs the master about one nap; one
 * descheduled while it holds an item costs what is left of that item once the scheduler runs
 * it again (a sleeping master frees a core for it, but the scheduler may keep a thread that
 * just ran on its own core).  A call whose master had to nap is therefore taken as a sign of
 * contention: the next calls run on the calling thread alone for a while (fx_backoff_*).  Which thread computes an item never changes what the item
 * computes: results are bitwise identical for any team.
 */
#ifndef FASTXENT_XENT_TEAM_H
#define FASTXENT_XENT_TEAM_H

#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_WIN32)
#include <windows.h>
#else
#include <time.h>
#endif

/* fn(ctx, item, thread) computes one item and returns a count (summed over the items);
 * thread (0 .. nt - 1, 0 on the calling thread) says whose per-thread scratch it may use. */
typedef int64_t (*fx_item_fn)(const void *ctx, int64_t item, int thread);

#if defined(_OPENMP) && defined(__GNUC__)
#define FX_TEAM_WAITS 1

static inline int64_t fx_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/* Monotonic clock in nanoseconds. */
static inline int64_t fx_now_ns(void)
{
#if defined(_WIN32)
    LARGE_INTEGER f, c;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return (int64_t)((double)c.QuadPart * 1e9 / (double)f.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

static inline void fx_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* A short sleep: the core goes idle, so the scheduler can run the thread we wait for on it. */
static inline void fx_nap(void)
{
#if defined(_WIN32)
    Sleep(0);
#else
    struct timespec ts = {0, 20000};   /* 20 us (plus the kernel's timer slack) */
    nanosleep(&ts, NULL);
#endif
}

#define FX_SPIN_MIN_NS 20000     /* spin at least this long before napping */
#define FX_SPIN_MAX_NS 200000    /* ... and at most this long */

/* Wait until *counter >= target: spin for spin_ns, then nap.  Returns the number of naps. */
static int fx_wait_count(const int64_t *counter, int64_t target, int64_t spin_ns)
{
    if (fx_load(counter) >= target) return 0;
    const int64_t until = fx_now_ns() + spin_ns;
    for (;;) {
        for (int k = 0; k < 64; k++) {
            if (fx_load(counter) >= target) return 0;
            fx_cpu_relax();
        }
        if (fx_now_ns() >= until) break;
    }
    int naps = 0;
    while (fx_load(counter) < target) {
        fx_nap();
        naps++;
    }
    return naps;
}

/* Back-off after contention: when the calling thread had to nap for a partner (one was
 * descheduled), the next 2, 4, 8 ... 64 calls run on the calling thread alone, then a call
 * tries the team again; a call without napping resets the back-off.  Shared by all calling
 * threads; a lost update only changes a team size, never a result. */
#define FX_BACKOFF_MAX 6
static int fx_backoff_level = 0;   /* 0: no contention seen by the last team */
static int fx_backoff_left = 0;    /* calls still to run on one thread */

static int fx_backoff_serial(void)
{
    int left = __atomic_load_n(&fx_backoff_left, __ATOMIC_RELAXED);
    if (left <= 0) return 0;
    __atomic_store_n(&fx_backoff_left, left - 1, __ATOMIC_RELAXED);
    return 1;
}

static void fx_backoff_record(int master_naps)
{
    int level = __atomic_load_n(&fx_backoff_level, __ATOMIC_RELAXED);
    if (master_naps == 0) {
        level = 0;
    } else {
        level = level < FX_BACKOFF_MAX ? level + 1 : FX_BACKOFF_MAX;
        __atomic_store_n(&fx_backoff_left, 1 << level, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&fx_backoff_level, level, __ATOMIC_RELAXED);
}
#else
#define FX_TEAM_WAITS 0
#endif

/* Run fn(ctx, item, thread) for item = 0 .. n_items - 1 on a team of at most nt threads
 * (nt <= 1: on the calling thread, no parallel region) and return the sum of what fn
 * returned.  thread < nt always, so scratch for nt threads suffices. */
static int64_t fx_run_items(int nt, int64_t n_items, fx_item_fn fn, const void *ctx)
{
    int64_t total = 0;
    if (nt <= 1 || n_items <= 1
#if FX_TEAM_WAITS
        || fx_backoff_serial()
#endif
       ) {
        for (int64_t i = 0; i < n_items; i++) total += fn(ctx, i, 0);
        return total;
    }
#if FX_TEAM_WAITS
    int master_naps = 0;
    int64_t next = 0;       /* the next unclaimed item */
    int64_t finished = 0;   /* items computed */
    int64_t entering = 0;   /* workers that have passed their wait and enter the barrier */
    #pragma omp parallel num_threads(nt) reduction(+:total)
    {
        const int64_t t0 = fx_now_ns();
        const int me = omp_get_thread_num();
        int64_t mine = 0, i;
        while ((i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < n_items) {
            total += fn(ctx, i, me);
            mine++;
        }
        if (mine > 0) __atomic_fetch_add(&finished, mine, __ATOMIC_RELEASE);
        /* spin for two of this thread's item times (within bounds), then nap */
        int64_t spin = mine > 0 ? 2 * (fx_now_ns() - t0) / mine : FX_SPIN_MIN_NS;
        spin = spin < FX_SPIN_MIN_NS ? FX_SPIN_MIN_NS : (spin > FX_SPIN_MAX_NS ? FX_SPIN_MAX_NS : spin);
        if (me != 0) {
            fx_wait_count(&finished, n_items, spin);
            __atomic_fetch_add(&entering, 1, __ATOMIC_RELEASE);
        } else {
            master_naps = fx_wait_count(&entering, omp_get_num_threads() - 1, spin);
        }
    }
    fx_backoff_record(master_naps);
#else
#ifdef _OPENMP
    #pragma omp parallel for schedule(dynamic) num_threads(nt) reduction(+:total)
    for (int64_t i = 0; i < n_items; i++) total += fn(ctx, i, omp_get_thread_num());
#else
    for (int64_t i = 0; i < n_items; i++) total += fn(ctx, i, 0);
#endif
#endif
    return total;
}

#endif /* FASTXENT_XENT_TEAM_H */
