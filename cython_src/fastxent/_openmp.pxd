# OpenMP queries with serial fallbacks: the same source builds without OpenMP.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FX_OPENMP_ENABLED 1
    static int fx_omp_max_threads(void) { return omp_get_max_threads(); }
    static int fx_omp_num_procs(void) { return omp_get_num_procs(); }
    #else
    #define FX_OPENMP_ENABLED 0
    static int fx_omp_max_threads(void) { return 1; }
    static int fx_omp_num_procs(void) { return 1; }
    #endif
    """
    const int FX_OPENMP_ENABLED
    int fx_omp_max_threads() nogil
    int fx_omp_num_procs() nogil
