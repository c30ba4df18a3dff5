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
 *   - The team is fastxent's own (POSIX threads, fx_pool_* below), so the master waits only
 *     for the items other threads have claimed.  Any parallel region ends in a barrier that
 *     every thread must reach: a partner parked by the scheduler before its first item or
 *     after its last held the master there for a time slice (4 ms and more: a 0.8 ms call
 *     took 8-12 ms on two threads with one core busy).  Builds without POSIX threads keep an
 *     OpenMP region in which the master enters the barrier after every worker said it would.
 *   - When the items run out, the master spins for about two of its own item times (a
 *     running partner finishes its item within one), then sleeps in short naps, which frees
 *     its core for the thread it is waiting for.
 *
 * A partner descheduled while it holds an item costs what is left of that item once the
 * scheduler runs it again (a sleeping master frees a core for it).  The team does not shrink
 * after such a wait: on a virtual machine the master also naps now and then on an idle host
 * (a vCPU woken late), and a back-off that ran the next calls on one thread let the workers
 * fall asleep, so that the next team call napped again and whole runs of in-cache calls took
 * the one-thread time.  Only the OpenMP-region fallback, whose end barrier waits for every
 * thread of the region, keeps a back-off (fx_backoff_*).  Which thread computes an item never
 * changes what the item computes: results are bitwise identical for any team.
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

/* What the tests read of the teams (fx_team_stats_take, fastxent._kernels._team_stats); the
 * kernels never read them.  Since the last read: the largest team that fx_run_items ran its
 * items on (1 when they all ran on the calling thread), and the most threads of one such run
 * that computed at least one item.  A team's size is the runner's fx_team_size, or fewer if
 * threads could not be created; a partner that wakes late finds no item left, so the second
 * number can be smaller than the first.  (The OpenMP fallback of compilers without GNU
 * atomics notes the team only.) */
static int fx_stat_team = 1, fx_stat_busy = 1;

static void fx_stat_max(int *p, int v)
{
#if defined(__GNUC__)
    int cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > cur
           && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
#else
    if (v > *p) *p = v;
#endif
}

/* stats[0] the largest team, stats[1] the most threads that computed items; both start
 * again from 1. */
static void fx_team_stats_take(int *stats)
{
#if defined(__GNUC__)
    stats[0] = __atomic_exchange_n(&fx_stat_team, 1, __ATOMIC_RELAXED);
    stats[1] = __atomic_exchange_n(&fx_stat_busy, 1, __ATOMIC_RELAXED);
#else
    stats[0] = fx_stat_team;
    stats[1] = fx_stat_busy;
    fx_stat_team = fx_stat_busy = 1;
#endif
}

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

/* How long a thread that computed `mine` items since t0 spins before napping: about two of
 * its item times (a running partner finishes its item within one), within bounds. */
static int64_t fx_spin_ns(int64_t mine, int64_t t0)
{
    const int64_t spin = mine > 0 ? 2 * (fx_now_ns() - t0) / mine : FX_SPIN_MIN_NS;
    return spin < FX_SPIN_MIN_NS ? FX_SPIN_MIN_NS : (spin > FX_SPIN_MAX_NS ? FX_SPIN_MAX_NS : spin);
}

#else
#define FX_TEAM_WAITS 0
#endif

#if FX_TEAM_WAITS && !defined(_WIN32)
/*
 * fastxent's own team: nt - 1 worker threads (pthreads), created on first use and kept; the
 * calling thread is the team's master.  An OpenMP parallel region ends in a barrier that every
 * thread of the team must reach, so a partner that the scheduler parks anywhere in the region
 * (before its first item, or after its last) holds the master for a time slice of the system
 * (4 ms and more; a 1 ms call on a machine with one busy core took 12 ms).  Here the master
 * waits only for the items that partners have claimed: a partner that wakes up late finds no
 * item left and goes back to sleep, and nothing waits for it.
 *
 * A call publishes its job (fn, ctx, n_items, nt) and then a new generation in `claim`, whose
 * high 32 bits are the generation and low 32 bits the next unclaimed item.  A worker reads the
 * job and claims an item with a compare-and-swap on `claim` that expects the generation it
 * read: the swap succeeds only while that job still has unclaimed items, so the job it read
 * was still the current one, and the master, which waits until every claimed item is
 * finished, cannot have returned.  Idle workers spin for FX_POOL_SPIN_NS, then sleep on a
 * condition variable.  One caller at a time owns the team; a concurrent caller (another
 * Python thread) runs its items on its own thread.  After fork() the child starts without
 * workers.
 */
#include <pthread.h>
#include <unistd.h>

#define FX_POOL_MAX 256              /* worker threads at most */
#define FX_POOL_SPIN_NS 50000        /* an idle worker spins this long before sleeping */

typedef struct {
    pthread_mutex_t own;             /* held by the caller whose job the team runs */
    pthread_mutex_t mu;              /* guards sleepers and the sleep / wake hand-over */
    pthread_cond_t cv;
    int nworkers;                    /* created (only the owner changes it) */
    int sleepers;                    /* workers waiting on cv */
    int64_t published;               /* the latest generation (workers wait for a new one) */
    uint64_t claim;                  /* generation (mod 2^32) << 32 | next item */
    int64_t finished;                /* items of the current job computed */
    int64_t total;                   /* sum of the items' return values */
    fx_item_fn fn;                   /* the current job */
    const void *ctx;
    int64_t n_items;
    int nt;
    int64_t spin_ns;                 /* idle workers' spin: 0 once there are more than cores */
    int busy;                        /* workers that claimed an item of the current job */
} fx_pool_t;

static fx_pool_t fx_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                            PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, NULL, NULL, 0, 0,
                            FX_POOL_SPIN_NS, 0};
static pthread_once_t fx_pool_once = PTHREAD_ONCE_INIT;

static void fx_pool_after_fork(void)
{
    /* the child has only the thread that forked: no workers, nothing owned */
    pthread_mutex_init(&fx_pool.own, NULL);
    pthread_mutex_init(&fx_pool.mu, NULL);
    pthread_cond_init(&fx_pool.cv, NULL);
    fx_pool.nworkers = 0;
    fx_pool.sleepers = 0;
}

static void fx_pool_init(void) { pthread_atfork(NULL, NULL, fx_pool_after_fork); }

/* Claim and compute items of generation gen as thread me; returns how many were computed. */
static int64_t fx_pool_work(int64_t gen, int me)
{
    int64_t done = 0;
    for (;;) {
        uint64_t w = __atomic_load_n(&fx_pool.claim, __ATOMIC_ACQUIRE);
        if ((uint32_t)(w >> 32) != (uint32_t)gen) return done;
        const int64_t i = (int64_t)(uint32_t)w;
        /* the job as published with this generation, or (if the master has moved on, which
         * the swap below detects) a later one, never used then */
        const fx_item_fn fn = __atomic_load_n(&fx_pool.fn, __ATOMIC_RELAXED);
        const void *ctx = __atomic_load_n(&fx_pool.ctx, __ATOMIC_RELAXED);
        const int64_t n = __atomic_load_n(&fx_pool.n_items, __ATOMIC_RELAXED);
        const int nt = __atomic_load_n(&fx_pool.nt, __ATOMIC_RELAXED);
        if (i >= n || me >= nt) return done;
        if (!__atomic_compare_exchange_n(&fx_pool.claim, &w, w + 1, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        /* the swap succeeded, so job gen still had item i unclaimed: fn, ctx are its own */
        if (done == 0 && me != 0) __atomic_fetch_add(&fx_pool.busy, 1, __ATOMIC_RELAXED);
        const int64_t r = fn(ctx, i, me);
        if (r != 0) __atomic_fetch_add(&fx_pool.total, r, __ATOMIC_RELAXED);
        __atomic_fetch_add(&fx_pool.finished, 1, __ATOMIC_RELEASE);
        done++;
    }
}

static void *fx_pool_worker(void *arg)
{
    const int me = (int)(intptr_t)arg;
    int64_t seen = __atomic_load_n(&fx_pool.published, __ATOMIC_ACQUIRE);
    for (;;) {
        int64_t gen = __atomic_load_n(&fx_pool.published, __ATOMIC_ACQUIRE);
        if (gen == seen) {
            const int64_t until = fx_now_ns() + __atomic_load_n(&fx_pool.spin_ns,
                                                                 __ATOMIC_RELAXED);
            while ((gen = __atomic_load_n(&fx_pool.published, __ATOMIC_ACQUIRE)) == seen
                   && fx_now_ns() < until) {
                for (int k = 0; k < 64; k++) fx_cpu_relax();
            }
        }
        if (gen == seen) {
            pthread_mutex_lock(&fx_pool.mu);
            fx_pool.sleepers++;
            while ((gen = __atomic_load_n(&fx_pool.published, __ATOMIC_ACQUIRE)) == seen)
                pthread_cond_wait(&fx_pool.cv, &fx_pool.mu);
            fx_pool.sleepers--;
            pthread_mutex_unlock(&fx_pool.mu);
        }
        seen = gen;
        fx_pool_work(gen, me);
    }
    return NULL;
}

/* Make sure nt - 1 workers exist (the caller owns the team); returns the team size that can
 * run, nt or fewer if threads could not be created. */
static int fx_pool_grow(int nt)
{
    if (nt - 1 > FX_POOL_MAX) nt = FX_POOL_MAX + 1;
    if (fx_pool.nworkers < nt - 1) {
        while (fx_pool.nworkers < nt - 1) {
            pthread_t th;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&attr, (size_t)8 << 20);
            const int bad = pthread_create(&th, &attr, fx_pool_worker,
                                           (void *)(intptr_t)(fx_pool.nworkers + 1));
            pthread_attr_destroy(&attr);
            if (bad) break;
            fx_pool.nworkers++;
        }
        /* more threads than cores: idle workers sleep at once, not spin on a core that
         * another thread of the team (or the caller's next Python step) needs.  Decided when
         * the team grows, not per call: sysconf reads a file (about 6 us). */
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        __atomic_store_n(&fx_pool.spin_ns, (cores > 0 && fx_pool.nworkers + 1 > cores)
                         ? 0 : FX_POOL_SPIN_NS, __ATOMIC_RELAXED);
    }
    return fx_pool.nworkers + 1 < nt ? fx_pool.nworkers + 1 : nt;
}

/* The team run of fx_run_items; returns 0 and leaves *total alone when the team is busy with
 * another caller's job (the caller then runs the items itself). */
static int fx_pool_run(int nt, int64_t n_items, fx_item_fn fn, const void *ctx, int64_t *total)
{
    pthread_once(&fx_pool_once, fx_pool_init);
    if (n_items >= ((int64_t)1 << 31) || pthread_mutex_trylock(&fx_pool.own) != 0) return 0;
    nt = fx_pool_grow(nt);
    if (nt <= 1) {
        pthread_mutex_unlock(&fx_pool.own);
        return 0;
    }
    const int64_t t0 = fx_now_ns();
    __atomic_store_n(&fx_pool.fn, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.ctx, ctx, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.n_items, n_items, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.nt, nt, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.total, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.finished, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fx_pool.busy, 0, __ATOMIC_RELAXED);
    const int64_t gen = fx_pool.published + 1;
    __atomic_store_n(&fx_pool.claim, (uint64_t)(uint32_t)gen << 32, __ATOMIC_RELEASE);
    pthread_mutex_lock(&fx_pool.mu);
    __atomic_store_n(&fx_pool.published, gen, __ATOMIC_RELEASE);
    if (fx_pool.sleepers > 0) pthread_cond_broadcast(&fx_pool.cv);
    pthread_mutex_unlock(&fx_pool.mu);
    /* the master works from the first item on, then waits for the items partners hold: it
     * spins for about two of its own item times, then naps (freeing its core for them) */
    const int64_t mine = fx_pool_work(gen, 0);
    fx_wait_count(&fx_pool.finished, n_items, fx_spin_ns(mine, t0));
    *total = __atomic_load_n(&fx_pool.total, __ATOMIC_ACQUIRE);
    /* every item is finished, so every worker's count in busy is seen (it precedes the
     * release of its items' finished counts) */
    fx_stat_max(&fx_stat_team, nt);
    fx_stat_max(&fx_stat_busy, (mine > 0) + __atomic_load_n(&fx_pool.busy, __ATOMIC_RELAXED));
    pthread_mutex_unlock(&fx_pool.own);
    return 1;
}
#define FX_POOL 1
#else
#define FX_POOL 0
#endif

#if FX_TEAM_WAITS && !FX_POOL
/* The OpenMP-region fallback's back-off after contention: when the calling thread had to nap
 * for a partner (one was descheduled, and the region's end barrier waits for it), the next
 * 2, 4, 8 ... 64 calls run on the calling thread alone, then a call tries the team again; a
 * call without napping resets the back-off.  Shared by all calling threads; a lost update
 * only changes a team size, never a result. */
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
#endif

/* Run fn(ctx, item, thread) for item = 0 .. n_items - 1 on a team of at most nt threads
 * (nt <= 1: on the calling thread) and return the sum of what fn returned.  thread < nt
 * always, so scratch for nt threads suffices. */
static int64_t fx_run_items(int nt, int64_t n_items, fx_item_fn fn, const void *ctx)
{
    int64_t total = 0;
    if (nt <= 1 || n_items <= 1
#if FX_POOL
        || !fx_pool_run(nt, n_items, fn, ctx, &total)
#elif FX_TEAM_WAITS
        || fx_backoff_serial()
#endif
       ) {
        for (int64_t i = 0; i < n_items; i++) total += fn(ctx, i, 0);
        return total;
    }
#if !FX_POOL
#if FX_TEAM_WAITS
    int master_naps = 0;
    int64_t next = 0;       /* the next unclaimed item */
    int64_t finished = 0;   /* items computed */
    int64_t entering = 0;   /* workers that have passed their wait and enter the barrier */
    int team = 1, busy = 0; /* the region's threads, and those that computed an item */
    #pragma omp parallel num_threads(nt) reduction(+:total)
    {
        const int64_t t0 = fx_now_ns();
        const int me = omp_get_thread_num();
        int64_t mine = 0, i;
        if (me == 0) team = omp_get_num_threads();
        while ((i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED)) < n_items) {
            total += fn(ctx, i, me);
            mine++;
        }
        if (mine > 0) {
            __atomic_fetch_add(&busy, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&finished, mine, __ATOMIC_RELEASE);
        }
        const int64_t spin = fx_spin_ns(mine, t0);
        if (me != 0) {
            fx_wait_count(&finished, n_items, spin);
            __atomic_fetch_add(&entering, 1, __ATOMIC_RELEASE);
        } else {
            master_naps = fx_wait_count(&entering, omp_get_num_threads() - 1, spin);
        }
    }
    fx_backoff_record(master_naps);
    fx_stat_max(&fx_stat_team, team);
    fx_stat_max(&fx_stat_busy, busy);
#else
#ifdef _OPENMP
    int team = 1;
    #pragma omp parallel for schedule(dynamic) num_threads(nt) reduction(+:total)
    for (int64_t i = 0; i < n_items; i++) {
        if (i == 0) team = omp_get_num_threads();  /* one thread writes it */
        total += fn(ctx, i, omp_get_thread_num());
    }
    fx_stat_max(&fx_stat_team, team);
#else
    for (int64_t i = 0; i < n_items; i++) total += fn(ctx, i, 0);
#endif
#endif
#endif
    return total;
}

#endif /* FASTXENT_XENT_TEAM_H */
