/*
 * A NumPy memory handler that keeps a few large freed blocks for reuse.
 *
 * Why: an array larger than glibc's mmap threshold (32 MiB at most) is mmap'ed on every
 * allocation and unmapped when freed, so each new gradient array costs the kernel a page
 * fault and a zero-fill per page: for a (8192, 1000) float64 gradient that is about as much
 * time as the whole loss-and-gradient pass.  fastxent allocates its gradient (and Hessian)
 * arrays with this handler: when such an array dies, its block (if at least fx_cache_min
 * bytes) is kept, up to FX_CACHE_SLOTS blocks and a byte limit (the oldest blocks are freed
 * to make room), and the next request of the same size gets it back without touching the
 * operating system.  Only arrays fastxent
 * allocates use the handler; NumPy's own default handler is never replaced.
 *
 * NumPy itself reports every block to tracemalloc (PyDataMem_UserNEW / UserFREE), so
 * tracemalloc sees these arrays exactly as it sees NumPy's own.  A lock makes the handler
 * safe to call from any thread.
 */
#ifndef FASTXENT_FX_BUFFER_CACHE_H
#define FASTXENT_FX_BUFFER_CACHE_H

#include <Python.h>
#include <pythread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include "numpy/ndarraytypes.h"

#define FX_CACHE_SLOTS 4

typedef struct {
    void *ptr;
    size_t size;
    unsigned long long stamp;   /* when it was cached: the oldest block is evicted first */
} fx_cached_block;

static fx_cached_block fx_cache_blocks[FX_CACHE_SLOTS];
static size_t fx_cache_held = 0;                 /* bytes held in the cache */
static size_t fx_cache_limit = (size_t)1 << 30;  /* at most this many bytes held */
static size_t fx_cache_min = (size_t)1 << 22;    /* blocks below 4 MiB: plain malloc/free */
static size_t fx_cache_hits = 0, fx_cache_misses = 0;
static unsigned long long fx_cache_clock = 0;
static PyThread_type_lock fx_cache_lock = NULL;

static void fx_cache_acquire(void) { if (fx_cache_lock) PyThread_acquire_lock(fx_cache_lock, WAIT_LOCK); }
static void fx_cache_release(void) { if (fx_cache_lock) PyThread_release_lock(fx_cache_lock); }

static void *fx_cache_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (size >= fx_cache_min) {
        void *p = NULL;
        fx_cache_acquire();
        for (int i = 0; i < FX_CACHE_SLOTS; i++) {
            if (fx_cache_blocks[i].ptr != NULL && fx_cache_blocks[i].size == size) {
                p = fx_cache_blocks[i].ptr;
                fx_cache_blocks[i].ptr = NULL;
                fx_cache_held -= size;
                break;
            }
        }
        if (p != NULL) fx_cache_hits++; else fx_cache_misses++;
        fx_cache_release();
        if (p != NULL) return p;
        p = malloc(size);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        /* as NumPy's own allocator does for large blocks: ask for transparent huge pages
         * (fewer TLB misses on a pass over tens of MB); advice only, failure is harmless */
        if (p != NULL) {
            size_t offset = 4096u - (size_t)((uintptr_t)p % 4096u);
            if (offset < size) madvise((char *)p + offset, size - offset, MADV_HUGEPAGE);
        }
#endif
        return p;
    }
    return malloc(size ? size : 1);
}

static void *fx_cache_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    return calloc(nelem ? nelem : 1, elsize ? elsize : 1);
}

static void *fx_cache_realloc(void *ctx, void *ptr, size_t new_size)
{
    (void)ctx;
    return realloc(ptr, new_size ? new_size : 1);
}

static void fx_cache_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (ptr == NULL) return;
    if (size >= fx_cache_min && size <= fx_cache_limit) {
        /* keep this block; make room by evicting the oldest blocks (sizes that are no longer
         * asked for age out instead of holding the slots for good) */
        void *evicted[FX_CACHE_SLOTS];
        int n_evicted = 0;
        fx_cache_acquire();
        for (;;) {
            int empty = -1, oldest = -1;
            for (int i = 0; i < FX_CACHE_SLOTS; i++) {
                if (fx_cache_blocks[i].ptr == NULL) { if (empty < 0) empty = i; continue; }
                if (oldest < 0 || fx_cache_blocks[i].stamp < fx_cache_blocks[oldest].stamp)
                    oldest = i;
            }
            if (empty >= 0 && fx_cache_held + size <= fx_cache_limit) {
                fx_cache_blocks[empty].ptr = ptr;
                fx_cache_blocks[empty].size = size;
                fx_cache_blocks[empty].stamp = ++fx_cache_clock;
                fx_cache_held += size;
                break;
            }
            /* oldest >= 0 here: with every slot empty, held is 0 and size <= limit */
            evicted[n_evicted++] = fx_cache_blocks[oldest].ptr;
            fx_cache_held -= fx_cache_blocks[oldest].size;
            fx_cache_blocks[oldest].ptr = NULL;
        }
        fx_cache_release();
        for (int i = 0; i < n_evicted; i++) free(evicted[i]);   /* outside the lock */
        return;
    }
    free(ptr);
}

/* Free every cached block and set the byte limit (0 disables the cache). */
static void fx_cache_configure(size_t limit)
{
    fx_cache_acquire();
    for (int i = 0; i < FX_CACHE_SLOTS; i++) {
        if (fx_cache_blocks[i].ptr != NULL) free(fx_cache_blocks[i].ptr);
        fx_cache_blocks[i].ptr = NULL;
    }
    fx_cache_held = 0;
    fx_cache_limit = limit;
    fx_cache_release();
}

static PyDataMem_Handler fx_cache_handler = {
    "fastxent_buffer_cache",
    1,
    {
        NULL,
        fx_cache_malloc,
        fx_cache_calloc,
        fx_cache_realloc,
        fx_cache_free,
    },
};

/* The handler as NumPy wants it: a capsule named "mem_handler". */
static PyObject *fx_cache_capsule(void)
{
    if (fx_cache_lock == NULL) {
        fx_cache_lock = PyThread_allocate_lock();
        if (fx_cache_lock == NULL) return PyErr_NoMemory();
    }
    return PyCapsule_New(&fx_cache_handler, "mem_handler", NULL);
}

#endif /* FASTXENT_FX_BUFFER_CACHE_H */
