"""A DoFn base that spreads its elements over a local process pool (local runner only).

Beam's local runner in multi-process mode spends ~8 s starting SDK workers per
run (measured: a 16-element no-op pipeline takes 9.6 s multi-process vs 1.5 s
in-memory on 2 cores). beam_filter therefore runs the local pipeline in-memory
and lets the heavy per-shard steps (fused score+select, reshard writers) hand
their work to a small process pool of their own. On Dataflow ``processes`` is 0
and elements are processed inline, one per DoFn thread, as usual.

A subclass names a picklable top-level ``work`` function and its ``args``, and
turns each result into outputs with ``emit``. Results are emitted in input
order at the end of the bundle (all elements of a local bundle run at once).
``stages``: the recipe stages the work applies, whose modules the pool's fork
server imports once; ``side_inputs_arg``: the step's side inputs go to ``work``
as one more argument, a dict by name.

A step's pool stops when its bundle is done (the workers hold a part's memory),
unless the step ``hands_on``: a light pass over the parts (rank keys, summaries)
leaves its pool to the next step that starts one with the same modules (the
select itself), which saves starting and warming a second pool, about 0.3 s of
a 1.28M-row top-fraction select on 2 cores. :func:`stop_handed_pools` ends any
pool left over when the pipeline is done.

Pool workers die with the beam-filter process. They are children of the
forkserver, not of the main process, so when the main process was killed (kill -9,
OOM killer) they used to keep writing into the output for minutes. Each worker
therefore runs :func:`die_with` at start: ``PR_SET_PDEATHSIG`` kills it when the
forkserver goes (Linux), and a daemon thread checks every 0.5 s that the launching
process still lives and ends the worker when it does not.

Workers unpickle ``die_with`` from this module, so importing it must not import
Beam (~1.2 s per process): the Beam DoFn class is built on first access to
``LocalPoolDoFn`` (module ``__getattr__``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

POLL_S = 0.5
_HANDED: dict = {}      # pool key -> a running executor a hands_on step left for the next step
_PRELOADED: frozenset = frozenset()     # what the fork server warm_forkserver started imported


def local_pool_size(asked: int | None) -> int:
    """Processes of the local pool: ``asked`` (``--direct_num_workers``), else one per core."""
    return max(1, int(asked) if asked else (os.cpu_count() or 1))


def stop_handed_pools() -> None:
    """Stop the pools no later step took over (the launcher calls it when the pipeline is done)."""
    while _HANDED:
        _HANDED.popitem()[1].shutdown()


def warm_forkserver(modules) -> None:
    """Start multiprocessing's fork server now, importing ``modules`` (plus this one).

    The launcher calls it before importing Beam (~1 s of import on one core, while the other
    cores idle): the server imports the work's modules meanwhile, and the first pool's workers
    fork from a ready server instead of waiting on those imports after Beam's. A process has one
    fork server; the pools started later use it, and their own preload list only counts for a
    server not yet running, so a module missing here is imported by each worker instead.
    """
    import multiprocessing
    from multiprocessing import forkserver

    global _PRELOADED
    preload = sorted(set(modules) | {__name__})
    # a server a pool started earlier in this process keeps its own preload: then claim nothing
    fresh = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", 0) is None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    forkserver.ensure_running()
    if fresh:
        _PRELOADED = frozenset(preload)


@contextlib.contextmanager
def preloaded_pool(module: str, tasks: int):
    """A process pool on the fork server :func:`warm_forkserver` started, if that server preloaded
    ``module`` and ``tasks`` can use more than one process; else None (the caller works inline).
    For short independent jobs after the pipeline (report charts): its workers fork ready, where a
    fresh pool would import ``module`` in each worker first."""
    processes = min(tasks, os.cpu_count() or 1)
    if module not in _PRELOADED or processes < 2:
        yield None
        return
    import concurrent.futures
    import multiprocessing

    pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver"),
                                                  initializer=die_with, initargs=(os.getpid(),))
    try:
        yield pool
    finally:
        pool.shutdown()


def die_with(pid: int) -> None:
    """Pool initializer: end this worker when process ``pid`` (the launcher) is gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):   # no prctl: the watcher thread still covers it
            pass
    threading.Thread(target=_watch, args=(pid,), name="die-with-launcher", daemon=True).start()


def _watch(pid: int) -> None:
    while _alive(pid):
        time.sleep(POLL_S)
    os._exit(1)


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie that its parent has not reaped yet counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True     # no /proc (macOS): kill(pid, 0) answered


def _define_dofn():
    import concurrent.futures
    import multiprocessing

    import apache_beam as beam

    class LocalPoolDoFn(beam.DoFn):
        work = None                 # staticmethod: top-level function(element, *args) -> result
        preload: tuple = ()         # modules the pool's fork server imports once
        side_inputs_arg = False     # True: work(element, *args, {side input name: value})
        hands_on = False            # True: leave the pool to the next step (module docstring)

        def __init__(self, args: tuple, processes: int = 0, stages=()):
            self.args = args
            self.processes = processes
            if stages:
                self.preload = tuple(type(s).__module__ for s in stages)

        def setup(self):
            self.pool = None

        def _modules(self) -> list[str]:
            return sorted(set(self.preload) | {type(self).work.__module__, __name__})

        def _pool_key(self) -> tuple:
            return (self.processes, tuple(self._modules()))

        def _start_pool(self):
            handed = _HANDED.pop(self._pool_key(), None)
            if handed is not None:
                return handed
            # forkserver, not fork: the runner has threads running, which fork does not survive.
            # The server imports the work's modules once; workers fork from it ready to go.
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(self._modules())
            return concurrent.futures.ProcessPoolExecutor(
                self.processes, mp_context=ctx, initializer=die_with, initargs=(os.getpid(),))

        def start_bundle(self):
            self.pending = []

        def process(self, element, **side_inputs):
            args = self.work_args(side_inputs)
            if self.processes <= 0:
                yield from self.emit(element, type(self).work(element, *args))
                return
            if self.pool is None:
                self.pool = self._start_pool()
            self.pending.append((element, self.pool.submit(type(self).work, element, *args)))

        def work_args(self, side_inputs: dict) -> tuple:
            """``work``'s arguments after the element: ``args``, then the side inputs by name."""
            return (*self.args, dict(side_inputs)) if self.side_inputs_arg else self.args

        def finish_bundle(self):
            from apache_beam.transforms.window import GlobalWindow
            from apache_beam.utils.timestamp import MIN_TIMESTAMP
            from apache_beam.utils.windowed_value import WindowedValue

            def windowed(value):
                return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])

            for element, future in self.pending:
                for out in self.emit(element, future.result()):
                    if isinstance(out, beam.pvalue.TaggedOutput):
                        yield beam.pvalue.TaggedOutput(out.tag, windowed(out.value))
                    else:
                        yield windowed(out)
            self.pending = []
            # The local runner hands a step all its elements in one bundle: the workers (a few
            # hundred MB each after a part) are done, and would otherwise stay alive beside the
            # next step's pool and the launcher's finalize until the runner tears the DoFn down.
            if self.hands_on and self.pool is not None:
                stale = _HANDED.pop(self._pool_key(), None)
                if stale is not None:
                    stale.shutdown()
                _HANDED[self._pool_key()], self.pool = self.pool, None
            self._stop_pool()

        def _stop_pool(self):
            if getattr(self, "pool", None) is not None:
                self.pool.shutdown()
                self.pool = None

        def teardown(self):
            self._stop_pool()

        def emit(self, element, result):
            yield result

    LocalPoolDoFn.__module__ = __name__
    LocalPoolDoFn.__qualname__ = "LocalPoolDoFn"
    return LocalPoolDoFn


def __getattr__(name: str):
    if name == "LocalPoolDoFn":
        cls = globals()["LocalPoolDoFn"] = _define_dofn()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
