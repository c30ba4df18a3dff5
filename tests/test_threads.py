"""Thread safety: many Python threads calling fastxent at once on shared inputs.

The kernels release the GIL, keep no global scratch state and write only into buffers the
Python layer allocated for that call (the one shared structure, the gradient block cache, is
guarded by a lock), so concurrent calls must give exactly the bits a serial call gives.
8 threads x 200 calls each, every entry point, n_threads=2 and 1, the caller's own
``grad_out`` buffers, and calls that raise; 8 threads drawing gradients of 4 MiB and more from
the gradient block cache at once; 4 threads sharing the kernels' worker threads at a size that
runs on a team; the team sizes the kernels choose, read back from them; and a forked child's
calls.
"""

import os
import threading
import warnings

import numpy as np
import pytest
from test_determinism import assert_same_bits
from util import logits, probabilities, team_items, team_per_item, team_size, teams_ran

import fastxent as fx
from fastxent import _kernels

N_PY_THREADS = 8
CALLS_PER_THREAD = 200


def make_tasks(rng):
    """A list of (name, callable(grad_buffer) -> result, expected exception or None).

    Every callable reads only the shared (read-only) inputs built here.
    """
    x32 = logits(rng, (96, 130), np.float32)
    x64 = logits(rng, (96, 130), np.float64)
    p64 = probabilities(rng, (96, 130), np.float64)
    xb = logits(rng, (40, 3, 17), np.float32)
    labels = rng.integers(0, 130, size=96)
    labels_ignore = np.where(rng.random(96) < 0.2, -100, labels)
    bad_labels = labels.copy()
    bad_labels[50] = 130
    soft = rng.dirichlet(np.ones(130), size=96)
    zb = rng.uniform(size=(40, 3, 17)).astype(np.float32)
    sw = rng.uniform(0.5, 2.0, size=96)
    cw = rng.uniform(0.5, 2.0, size=130)
    for a in (x32, x64, p64, xb, labels, labels_ignore, bad_labels, soft, zb, sw, cw):
        a.flags.writeable = False

    sparse = fx.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100,
                                              class_weight=cw, reduction="mean_with_sample_weight",
                                              label_smoothing=0.1, n_threads=2)
    sparse1 = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=1, z_loss=1e-3)
    cat = fx.CategoricalCrossentropy(from_logits=False, reduction="sum", n_threads=2)
    catl = fx.CategoricalCrossentropy(from_logits=True, reduction="none", n_threads=1)
    binary = fx.BinaryCrossentropy(from_logits=True, axis=1, pos_weight=2.0, n_threads=2,
                                   reduction="sum_over_batch_size")
    binary_last = fx.BinaryCrossentropy(from_logits=True, label_smoothing=0.1, n_threads=2,
                                        reduction="none")

    sfocal = fx.SparseCategoricalFocalCrossentropy(from_logits=True, ignore_class=-100,
                                                   class_weight=cw, n_threads=2,
                                                   reduction="mean_with_sample_weight")
    bfocal = fx.BinaryFocalCrossentropy(apply_class_balancing=True, from_logits=True, axis=1,
                                        n_threads=2)
    bfocal_last = fx.BinaryFocalCrossentropy(gamma=1.5, from_logits=True, n_threads=2)
    kl = fx.KLDivergence(from_logits=True, n_threads=2, reduction="sum")
    gce = fx.CategoricalGeneralizedCrossEntropy(q=0.3, n_threads=1)

    def grad_into(loss, y, x, w=None):
        def run(buffers):
            out = buffers.setdefault((x.shape, x.dtype.str), np.empty_like(x))
            value, grad = loss.loss_and_grad(y, x, w, grad_out=out)
            assert grad is out
            return value, grad.copy()
        return run

    return [
        ("sparse f32 lag", lambda b: sparse.loss_and_grad(labels_ignore, x32, sw), None),
        ("sparse f64 lag", lambda b: sparse.loss_and_grad(labels_ignore, x64, sw), None),
        ("sparse1 grad_out", grad_into(sparse1, labels, x32), None),
        ("sparse1 call", lambda b: sparse1(labels, x64), None),
        ("sparse bad label", lambda b: sparse1(bad_labels, x32), ValueError),
        ("categorical probs", lambda b: cat.loss_and_grad(soft, p64, sw), None),
        ("categorical logits none", lambda b: catl.loss_and_grad(soft, x64), None),
        ("categorical grad_out", grad_into(catl, soft, x64), None),
        ("binary axis=1", lambda b: binary.loss_and_grad(zb, xb), None),
        ("binary grad_out", grad_into(binary_last, zb, xb), None),
        ("binary hessian", lambda b: tuple(binary.gradient_hessian(zb, xb)), None),
        ("function sparse", lambda b: fx.sparse_categorical_crossentropy(
            labels, x32, from_logits=True, n_threads=2), None),
        ("function categorical", lambda b: fx.categorical_crossentropy(
            soft, p64, label_smoothing=0.2), None),
        ("function binary", lambda b: fx.binary_crossentropy(zb, xb, from_logits=True), None),
        ("wrong dtype", lambda b: sparse1(labels, x32.astype(np.int32)), TypeError),
        ("sparse focal lag", lambda b: sfocal.loss_and_grad(labels_ignore, x32, sw), None),
        ("sparse focal hessian", lambda b: tuple(sfocal.gradient_hessian(labels_ignore, x64)),
         None),
        ("sparse focal bad label", lambda b: sfocal(bad_labels, x32), ValueError),
        ("binary focal axis=1", lambda b: bfocal.loss_and_grad(zb, xb), None),
        ("binary focal grad_out", grad_into(bfocal_last, zb, xb), None),
        ("kl logits", lambda b: kl.loss_and_grad(soft, x64), None),
        ("gce probs", lambda b: gce.loss_and_grad(labels, p64, sw), None),
        ("function categorical focal", lambda b: fx.categorical_focal_crossentropy(
            soft, x64, from_logits=True, n_threads=2), None),
    ]


def run_task(task, buffers):
    name, fn, exc = task
    if exc is None:
        return fn(buffers)
    with pytest.raises(exc):
        fn(buffers)
    return "raised"


def start_and_join(worker):
    """Run ``worker(thread_id)`` in N_PY_THREADS Python threads; fail if one hangs."""
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_PY_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"


def test_threads_match_serial(rng):
    tasks = make_tasks(rng)
    expected = [run_task(t, {}) for t in tasks]
    barrier = threading.Barrier(N_PY_THREADS)
    errors = []
    mismatches = []
    done = [0] * N_PY_THREADS

    def worker(tid):
        buffers = {}  # this thread's own gradient outputs
        try:
            barrier.wait()
            for i in range(CALLS_PER_THREAD):
                k = (i * 7 + tid * 3) % len(tasks)  # threads interleave different tasks
                got = run_task(tasks[k], buffers)
                try:
                    if isinstance(expected[k], str):
                        assert got == expected[k]
                    else:
                        assert_same_bits(got, expected[k], tasks[k][0])
                except AssertionError as exc:
                    mismatches.append(f"thread {tid} call {i} {tasks[k][0]}: {exc}")
                done[tid] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {tid}: {exc!r}")

    start_and_join(worker)
    assert not errors, errors
    assert not mismatches, mismatches[:5]
    assert done == [CALLS_PER_THREAD] * N_PY_THREADS


def test_threads_share_one_grad_out_buffer_per_thread_without_cross_talk(rng):
    """Each thread writes into its own preallocated buffer in a loop; the values in every
    buffer stay those of its own thread's inputs (no write lands in another thread's buffer)."""
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, reduction="sum", n_threads=2)
    inputs = [(rng.integers(0, 64, size=256), logits(rng, (256, 64), np.float32))
              for _ in range(N_PY_THREADS)]
    expected = [loss.loss_and_grad(y, x) for y, x in inputs]
    outs = [np.empty_like(x) for _, x in inputs]
    barrier = threading.Barrier(N_PY_THREADS)
    errors = []

    def worker(tid):
        y, x = inputs[tid]
        try:
            barrier.wait()
            for _ in range(CALLS_PER_THREAD):
                value, grad = loss.loss_and_grad(y, x, grad_out=outs[tid])
                assert grad is outs[tid]
                assert_same_bits((value, grad), expected[tid], f"thread {tid}")
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"thread {tid}: {exc!r}")

    start_and_join(worker)
    assert not errors, errors[:3]


def test_threads_share_the_gradient_block_cache(rng):
    """Gradients of 4 MiB and more come from fastxent's block cache (fx_buffer_cache.h), one
    process-wide pool guarded by a lock.  8 threads allocate and drop such gradients at once,
    of three shapes with two byte sizes (two shapes share one size, so blocks move between
    shapes and threads).  Each thread keeps its last two gradients alive and re-checks them
    after every call: a block handed out twice, or freed while in use, would be overwritten by
    another call and caught here.  The cache must actually serve blocks (hits go up)."""
    shapes = [(1024, 1024, np.float32), (512, 2048, np.float32), (512, 2048, np.float64)]
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, reduction="sum", n_threads=1)
    inputs = []
    for tid in range(N_PY_THREADS):
        n, c, dtype = shapes[tid % len(shapes)]
        x = logits(rng, (n, c), dtype)
        x.flags.writeable = False
        inputs.append((rng.integers(0, c, size=n), x))
    expected = [loss.loss_and_grad(y, x) for y, x in inputs]
    # start from an empty cache: blocks of other sizes left by earlier tests fill its slots
    fx.set_buffer_cache(fx.buffer_cache_info()["limit_bytes"])
    hits_before = fx.buffer_cache_info()["hits"]
    barrier = threading.Barrier(N_PY_THREADS)
    errors = []

    def worker(tid):
        y, x = inputs[tid]
        held = []
        try:
            barrier.wait()
            for i in range(60):
                value, grad = loss.loss_and_grad(y, x)
                assert_same_bits((value, grad), expected[tid], f"thread {tid} call {i}")
                for old in held:
                    assert_same_bits(old, expected[tid][1], f"thread {tid}: a held gradient")
                held = [*held[-1:], grad]
        except BaseException as exc:  # noqa: BLE001
            errors.append(f"thread {tid}: {exc!r}")

    start_and_join(worker)
    assert not errors, errors[:3]
    assert fx.buffer_cache_info()["hits"] > hits_before


# Inputs large enough that n_threads > 1 runs a team (one thread per 65,536 elements at most):
# the tests above use small ones, where every call runs on its caller's thread.
TEAM_SHAPE = (1024, 300)


def team_tasks(rng):
    """(name, callable() -> result) of calls that run on a thread team of up to 4."""
    x = logits(rng, TEAM_SHAPE, np.float32)
    x64 = logits(rng, TEAM_SHAPE, np.float64)
    y = rng.integers(0, TEAM_SHAPE[1], size=TEAM_SHAPE[0])
    z = rng.uniform(size=TEAM_SHAPE).astype(np.float32)
    for a in (x, x64, y, z):
        a.flags.writeable = False
    out = []
    for nt in (1, 2, 3, 4):
        sparse = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=nt)
        binary = fx.BinaryCrossentropy(from_logits=True, reduction="none", n_threads=nt)
        out += [(f"sparse f32 n_threads={nt}", lambda s=sparse: s.loss_and_grad(y, x)),
                (f"sparse f64 n_threads={nt}", lambda s=sparse: s.loss_and_grad(y, x64)),
                (f"binary n_threads={nt}", lambda b=binary: b.loss_and_grad(z, x))]
    return out


def test_concurrent_callers_of_the_thread_team(rng):
    """The kernels' worker threads serve one caller at a time; other Python threads calling
    at the same moment run their items on their own thread.  Every result keeps the bits of
    a call on one thread, whoever ran it."""
    tasks = team_tasks(rng)
    expected = {name: fn() for name, fn in tasks}
    serial = [name for name, _ in tasks if name.endswith("n_threads=1")]
    for name in expected:  # the same bits for every team size, before any concurrency
        base = name.rsplit(" ", 1)[0] + " n_threads=1"
        assert base in serial
        assert_same_bits(expected[name], expected[base], name)
    _kernels._team_stats()
    for name, fn in tasks:  # and those calls, alone, run on teams of up to 4
        fn()
        teams_ran(int(name.rsplit("=", 1)[1]), what=name)
    barrier = threading.Barrier(4)
    errors = []

    def worker(tid):
        try:
            barrier.wait()
            for i in range(60):
                name, fn = tasks[(i * 5 + tid * 7) % len(tasks)]
                assert_same_bits(fn(), expected[name], f"thread {tid} call {i} {name}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {tid}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[:3]


def _child_call(conn):
    rng = np.random.default_rng(7)
    name, fn = [t for t in team_tasks(rng) if t[0] == "sparse f32 n_threads=2"][0]
    value, grad = fn()
    conn.send((value, grad))
    conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform has no fork()")
def test_thread_team_after_fork():
    """A child forked after the parent's calls ran on a thread team has none of the parent's
    worker threads; its calls start a team of their own and return the parent's bits, without
    waiting for threads that do not exist."""
    import multiprocessing

    rng = np.random.default_rng(7)
    name, fn = [t for t in team_tasks(rng) if t[0] == "sparse f32 n_threads=2"][0]
    expected = fn()  # the parent's team exists now
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_call, args=(send,))
    with warnings.catch_warnings():  # "fork() in a multi-threaded process": that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)  # JAX, when imported
        child.start()
    send.close()
    try:
        assert recv.poll(60), "the forked child hung"
        got = recv.recv()
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    assert_same_bits(got, expected, name)


# (shape, kind): calls whose team the rule decides by each of its three bounds
RULE_CASES = [
    ((300, 257), "sparse"),  # 3 blocks, 77,100 elements: one thread
    ((1024, 300), "sparse"),  # 10 blocks, 307,200 elements: up to 4
    ((100_000, 1), "binary"),  # 4 blocks of one-element rows, 100,000 elements: one thread
    ((200_000, 1), "binary"),  # 7 blocks, 200,000 elements: up to 3
    ((3, 200_000), "sparse"),  # 3 blocks of one row, 600,000 elements: up to 3
    ((1, 262_147), "binary"),  # one row split into 5 chunks, 262,147 elements: up to 4
    ((2, 262_147), "sparse"),  # 10 chunks, 524,294 elements: up to 4
]


@pytest.mark.parametrize("per_item", [False, True], ids=["default", "team per item"])
def test_team_size_is_the_rule(rng, per_item):
    """A call runs on min(n_threads, its blocks or chunks, one thread per TEAM_ELEMENTS
    elements) threads, as the kernels report; with the minimum of elements lifted (the tests'
    hook), on min(n_threads, its blocks or chunks)."""
    assert _kernels.TEAM_ELEMENTS == 65_536
    for shape, kind in RULE_CASES:
        x = logits(rng, shape, np.float32)
        if kind == "sparse":
            y = rng.integers(0, shape[1], shape[0])
            cls = fx.SparseCategoricalCrossentropy
        else:
            y = rng.uniform(size=shape).astype(np.float32)
            cls = fx.BinaryCrossentropy
        _, items = team_items(shape)
        for nt in (1, 2, 3, 4):
            loss = cls(from_logits=True, reduction="sum", n_threads=nt)
            if per_item:
                with team_per_item():
                    loss.loss_and_grad(y, x)
                    teams_ran(min(nt, items), what=f"{shape} n_threads={nt}")
            else:
                _kernels._team_stats()
                loss.loss_and_grad(y, x)
                teams_ran(team_size(nt, items, x.size), what=f"{shape} n_threads={nt}")


@pytest.mark.skipif(not fx.openmp_enabled(), reason="a serial build has no thread team")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity")
                    else (os.cpu_count() or 1) < 2, reason="one processor")
def test_team_threads_share_the_items(rng):
    """The threads of a team compute items: within a few calls of 10 blocks on a team of 2,
    one has both threads computing blocks (a worker that wakes late may find none left)."""
    x = logits(rng, TEAM_SHAPE, np.float32)
    y = rng.integers(0, TEAM_SHAPE[1], TEAM_SHAPE[0])
    loss = fx.SparseCategoricalCrossentropy(from_logits=True, n_threads=2)
    _kernels._team_stats()
    busiest = 1
    for _ in range(200):
        loss.loss_and_grad(y, x)
        team, busy = _kernels._team_stats()
        assert team == 2
        busiest = max(busiest, busy)
        if busiest == 2:
            break
    assert busiest == 2, "no call had both threads of its team computing blocks"
