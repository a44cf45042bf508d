"""A job runs in a child process of the worker, so that the worker can stop it from outside.

`run_in_child(target, time_limit=..., abandon=...)` forks a child that calls `target()` and
sends back its result; the caller's thread waits for it and kills the child (SIGKILL) when
`time_limit` seconds have passed or `abandon()` turns true (the heartbeat sweep took the
job's lineage lease back). Either way the caller is free again at once, whatever the child
was doing: a loop in a chat template, a call into C that never returns, a process stopped
by a signal. A child that ends without a result (killed by the OOM killer, a crash) is
reported as `died`.

Why a child per job, and not Celery's `time_limit`/`soft_time_limit`:
- the hard `time_limit` exists only in the prefork pool (it kills the pool child); `alkn
  serve` and most tests run the solo pool, where Celery enforces no time limit at all;
- the soft limit is an exception raised into the job's thread: code that never returns to
  the interpreter (C, a stopped process) or that catches the exception never sees it;
- a Python thread cannot be stopped from outside. A child process can, in every pool (solo,
  threads, prefork: the pool child forks the job's child) and with no Celery (the tests'
  in-process `run_lineage_once`).

Why fork, not spawn: a spawned child imports torch and transformers again (13 s on our CI
machine) for every job; a forked one starts in milliseconds with everything imported. Fork is
safe here because the parent never runs model code: it does not initialise CUDA (only the
child does, which CUDA allows) and it holds no database connection the child could use (the
child drops the inherited pool without closing it, as the prefork pool child does). One
hazard remains for a parent that did run CPU model code itself (a test process): GNU OpenMP,
torch's CPU thread pool, hangs in a forked child at its first parallel operation once the
parent ran one. Such a parent has native (non-Python) threads beyond the one torch's import
starts; its children then compute on one thread instead of hanging.

What a child imports is lost with it: the parent imports the model code a job needs before
the first fork and whatever a finished child reports it imported (`warm_imports`), so later
children start warm (importing a model architecture took 8 s on a loaded 2-core machine).

The child dies with the process that forked it (Linux PR_SET_PDEATHSIG): a worker killed
mid-job takes its job with it, and the job is run again as a new attempt.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import multiprocessing
import os
import pickle
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

# Imported by the parent before its first job: what loading any causal LM needs, and the
# architecture of the demo model (`alkn serve` registers it).
BASE_IMPORTS = ("transformers.models.auto.modeling_auto",
                "transformers.models.auto.tokenization_auto",
                "transformers.models.llama.modeling_llama",
                # ROUGE-L's scorer (nltk's stemmer): 0.8 s of every job's evaluation otherwise
                "rouge_score.rouge_scorer")
# Warm imports run with OPENBLAS_NUM_THREADS=1: some (a model's module, the ROUGE scorer)
# load scipy, whose own OpenBLAS would start a thread pool, and a parent with native threads
# beyond torch's makes every child compute on one thread (see the module docstring). Nothing
# the worker runs does BLAS work through scipy that threads would speed up.
_warmed: set[str] = set()

Outcome = Literal["finished", "time_limit", "abandoned", "died"]
# Native threads a parent may have and still never have run an OpenMP region: torch's import
# starts one (see the module docstring).
_NATIVE_THREADS_OF_A_CLEAN_PARENT = 1


@dataclass
class ChildResult:
    outcome: Outcome
    value: Any  # what target() returned ("finished" only)
    exitcode: int | None
    seconds: float


def warm_imports(modules: Iterable[str] = BASE_IMPORTS) -> None:
    """Import `modules` here, in the parent, once each, so that forked children have them.
    Import only: no model code runs, no accelerator is touched. A module that fails to
    import is skipped (the child then imports, or fails on, it itself)."""
    for name in modules:
        if name in _warmed:
            continue
        _warmed.add(name)
        saved = os.environ.get("OPENBLAS_NUM_THREADS")
        try:
            os.environ["OPENBLAS_NUM_THREADS"] = "1"
            importlib.import_module(name)
        except Exception as exc:
            log.warning("could not preload %s: %s", name, exc)
        finally:
            if saved is None:
                os.environ.pop("OPENBLAS_NUM_THREADS", None)
            else:
                os.environ["OPENBLAS_NUM_THREADS"] = saved


def model_modules() -> list[str]:
    """The model architecture modules this process has imported (a child reports them)."""
    return sorted(m for m in sys.modules
                  if m.startswith("transformers.models.") and ".modeling_" in m)


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task")) - threading.active_count()
    except OSError:  # no /proc: assume the worst
        return _NATIVE_THREADS_OF_A_CLEAN_PARENT + 1


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


SCRATCH_PREFIX = "alkn-child-"


def _locked_scratch() -> tuple[str, int]:
    """A new scratch directory and an fd holding an exclusive flock on it (the child
    inherits it: the lock lasts while either runs). Made under another name and renamed
    once locked, so that no sweep sees it unlocked."""
    made = tempfile.mkdtemp(prefix="alkn-new-")
    hold = os.open(made, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(hold, fcntl.LOCK_EX)
    scratch = made.replace("alkn-new-", SCRATCH_PREFIX, 1)
    os.rename(made, scratch)
    return scratch, hold


def _drop_scratch(scratch: str, hold: int) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    os.close(hold)


def _remove_orphaned_scratch() -> None:
    """Scratch directories nobody holds a lock on: their worker and its job process are
    gone (SIGKILL, the OOM killer). A flock, not a pid: pids say nothing across containers
    that share the temporary directory, and nothing a name in it says is trusted."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(SCRATCH_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a running job's
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def _child(target: Callable[[], Any], out: int, parent_pid: int, db_url: str | None,
           one_thread: bool) -> None:
    """The forked child: run `target`, write its pickled result to `out`, exit (never
    returns; no parent's atexit handler or finaliser runs here)."""
    code = 1
    try:
        _die_with_parent(parent_pid)
        for signum in (signal.SIGTERM, signal.SIGINT):  # not the worker's shutdown handlers
            signal.signal(signum, signal.SIG_DFL)
        multiprocessing.current_process().name = "alkn-job"  # in log lines
        if db_url is not None:
            from registry.db import get_engine

            # The parent's pooled connections are its own: drop them unclosed, open new ones.
            get_engine(db_url).dispose(close=False)
        if one_thread:
            import torch

            torch.set_num_threads(1)
        with os.fdopen(out, "wb") as pipe:
            pipe.write(pickle.dumps(target()))
        code = 0
    except BaseException:
        with contextlib.suppress(BaseException):
            log.exception("the job's process failed")
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(pid: int, kill: bool = False) -> int | None:
    """Kill (when asked) and wait for the child; its exit code (-N: killed by signal N),
    None when someone else reaped it."""
    try:
        if kill:
            os.kill(pid, signal.SIGKILL)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except (ChildProcessError, ProcessLookupError):
        return None


def run_in_child(target: Callable[[], Any], *, time_limit: float,
                 abandon: Callable[[], bool] = lambda: False, db_url: str | None = None,
                 poll: float = 0.1) -> ChildResult:
    """Run `target()` in a forked child; kill it after `time_limit` s or once `abandon()`
    is true. `db_url`: the database the child uses (its inherited pool is dropped). The
    target's result must pickle.

    os.fork, not multiprocessing: a prefork pool child is a daemonic process, which
    multiprocessing does not let have children."""
    one_thread = _native_threads() > _NATIVE_THREADS_OF_A_CLEAN_PARENT
    # The child's temporary files (a job's copy of the model, staging, parked tensors) go
    # here, removed once it is gone: a killed child cleans nothing up itself.
    _remove_orphaned_scratch()
    parent_pid = os.getpid()
    scratch, hold = _locked_scratch()
    try:
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
    except BaseException:
        _drop_scratch(scratch, hold)
        raise
    start = time.monotonic()
    deadline = start + time_limit
    if pid == 0:  # pragma: no cover  (the child; it never returns)
        os.close(read_end)
        tempfile.tempdir = os.environ["TMPDIR"] = scratch
        _child(target, write_end, parent_pid, db_url, one_thread)
    os.close(write_end)  # EOF on read_end once the child is gone

    def done(outcome: Outcome, value: Any = None, kill: bool = False) -> ChildResult:
        code = _reap(pid, kill)
        _drop_scratch(scratch, hold)
        return ChildResult(outcome, value, code, time.monotonic() - start)

    chunks: list[bytes] = []
    try:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                left = deadline - time.monotonic()
                readable, _, _ = select.select([pipe], [], [], max(0.0, min(poll, left)))
                if readable:
                    data = pipe.read(1 << 16)
                    if data:
                        chunks.append(data)
                        continue
                    if not chunks:  # EOF without a result: killed, crashed
                        return done("died")
                    return done("finished", pickle.loads(b"".join(chunks)))
                if abandon():
                    return done("abandoned", kill=True)
                if time.monotonic() >= deadline:
                    return done("time_limit", kill=True)
    except BaseException:  # our own thread is stopping (a warm shutdown): the job goes too
        _reap(pid, kill=True)
        _drop_scratch(scratch, hold)
        raise
