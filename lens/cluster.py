"""lens-eval on a Dask cluster (dask.distributed, the `dask` extra): a local one of N worker
processes, or an existing scheduler that workers on other machines joined.

Each shard is one task: the run's settings (a small dict) and the shard's tokens travel to a
worker, which memory-maps the checkpoint from its own path once (lens.corpus.worker_shard) and
sends back the shard's sums. No weights go through the scheduler, and nothing is pickled that
is not a few numbers, strings or small arrays. A worker that dies takes its running shards with
it: the scheduler gives them to another worker, and a shard recorded twice counts once.
"""

import logging
import uuid
from contextlib import contextmanager
from minigpt.errors import MiniGPTError
from minigpt.parallel import N_THREADS

CONNECT_SECONDS = 10  # an unreachable scheduler is an error after this long


def require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise MiniGPTError('--workers and --scheduler need dask.distributed, which is not installed: run '
                           'pip install -e ".[dask]" in the minigpt checkout (or pip install "dask[distributed]")') from None


def worker_environ(workers):
    """The BLAS threads of each of a local cluster's `workers` processes: the cores shared out.
    OpenBLAS's AVX2 kernels round a product differently with another number of threads, so these
    workers' figures equal a single process's to ~1e-9 relative, and bit for bit a process's run
    with this environment."""
    threads = str(max(1, N_THREADS // workers))
    return {name: threads for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


@contextmanager
def dask_client(scheduler=None, workers=None):
    """A Client of the scheduler at `scheduler`, or of a local cluster of `workers` processes
    (one task at a time each; the machine's cores shared among them for BLAS and minigpt's
    threads). Both closed on leaving."""
    require_dask()
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MiniGPTError(f"cannot reach the Dask scheduler at {scheduler} ({reason[:200]})") from None
        with client:
            yield client
        return
    environ = {"MALLOC_TRIM_THRESHOLD_": 65536, **worker_environ(workers)}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


def map_shards(client, task, arguments):
    """Yield (i, task(*arguments[i])) for every shard i as workers finish them (any order)."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    tag = uuid.uuid4().hex[:8]
    futures = {client.submit(task, *args, key=f"lens-eval-{tag}-{i}", pure=False): i for i, args in arguments.items()}
    try:
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except KilledWorker:
                raise MiniGPTError(f"shard {futures[future]} killed every worker that ran it (out of memory?)") from None
    finally:
        client.cancel(list(futures))
