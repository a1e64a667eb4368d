"""Batching of session runs, as ``tensorflow_model_server --enable_batching`` does it.

What TF Serving 2.20 does (batching/batching_session.cc, TensorFlow's shared_batch_scheduler.h,
servables/tensorflow/bundle_factory_util.cc) and this module does the same way:

- One pool of ``num_batch_threads`` threads (default: the CPU count) serves every batched model
  (the SharedBatchScheduler). Each loaded version has a queue per tensor signature: runs that feed
  the same input tensors and fetch the same output tensors are merged, others never are.
- A run's inputs must all have a 0th dimension of the same size (INVALID_ARGUMENT otherwise, with
  TF Serving's words); that size is the task's size. A task larger than ``max_batch_size`` is
  refused (INVALID_ARGUMENT). A task that does not fit the open batch closes it and opens the next;
  when ``max_enqueued_batches`` batches already wait, it is refused at once (UNAVAILABLE, "The batch
  scheduling queue to which this task was submitted is full ...").
- A batch runs when it is full, when a newer one has opened behind it, or ``batch_timeout_micros``
  after its first task came; with the default 0, a batch runs as soon as a thread is free, so runs
  merge only while every thread is busy.
- Inputs are concatenated along dimension 0; tensors of different shapes fail the batch
  (FAILED_PRECONDITION) unless ``pad_variable_length_inputs``, which pads every dimension but the
  0th up to the batch's largest with the tensor's own first value. With ``allowed_batch_sizes`` the
  batch is padded up to the next allowed size by repeating the first row of its last task.
- The batch runs with the latest deadline of its tasks; a batch whose every task's deadline passed
  in the queue is not run (RESOURCE_EXHAUSTED "Run() timeout exceeded while waiting in batching
  queue"). Each output is split back along dimension 0 (FAILED_PRECONDITION when it cannot be).

Not done: ``enable_large_batch_splitting`` and ``max_execution_batch_size`` (a task is never split
across batches; one larger than ``max_batch_size`` is refused, as without splitting).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format

from app.errors import ServingStatus
from app.serving.extra_protos import BatchingParameters

log = logging.getLogger(__name__)

PER_MODEL_FILE = "batching_params.pbtxt"  # bundle_factory_util.cc kBatchingParamsFilename
DEFAULT_THREAD_POOL = "model_server_batch_threads"  # server.cc, when no --batching_parameters_file is given
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class BatchingConfigError(ValueError):
    """A BatchingParameters file that cannot be used: which file, and why."""


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with TF Serving's defaults for what a file leaves out."""

    max_batch_size: int = 1000  # QueueOptions.input_batch_size_limit
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # port::MaxParallelism()
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def problems(self) -> list[str]:
        """What TF Serving would refuse in these options, in its words."""
        found = []
        if self.num_batch_threads < 1:
            found.append(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        if self.max_batch_size < 1:
            found.append(f"max_batch_size must be positive; was {self.max_batch_size}")
        if self.max_enqueued_batches < 1:
            found.append(f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}")
        if self.batch_timeout_micros < 0:
            found.append(f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(later <= earlier for earlier, later in itertools.pairwise(sizes)):
                found.append("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.max_batch_size:
                found.append(
                    "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                    f"{sizes[-1]}; expected {self.max_batch_size}"
                )
        return found

    def pad_to(self, size: int) -> int:
        """RoundToLowestAllowedBatchSize: the smallest allowed size that holds ``size`` (``size`` without a list)."""
        return next((allowed for allowed in self.allowed_batch_sizes if allowed >= size), size)


def parse_batching_parameters(text: str, source: str | Path, *, base: BatchingOptions | None = None) -> BatchingOptions:
    """A BatchingParameters text proto as options; what it leaves out comes from ``base`` (default: TF Serving's
    defaults). Raises BatchingConfigError naming ``source``."""
    message = BatchingParameters()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise BatchingConfigError(f"{source}: {exc}") from None
    values: dict[str, Any] = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if message.HasField(name):
            values[name] = getattr(message, name).value
    if message.HasField("thread_pool_name"):
        values["thread_pool_name"] = message.thread_pool_name.value
    values["allowed_batch_sizes"] = tuple(message.allowed_batch_sizes)
    values["pad_variable_length_inputs"] = message.pad_variable_length_inputs
    options = BatchingOptions(**{**_fields(base or BatchingOptions()), **values})
    problems = options.problems()
    if problems:
        raise BatchingConfigError(f"{source}: {'; '.join(problems)}")
    if message.HasField("enable_large_batch_splitting") and message.enable_large_batch_splitting.value:
        log.warning(
            "%s: enable_large_batch_splitting is not honoured here: a task is never split across batches, and one "
            "larger than max_batch_size (%d) is refused",
            source, options.max_batch_size,
        )  # fmt: skip
    return options


def read_batching_parameters(path: str | Path, *, base: BatchingOptions | None = None) -> BatchingOptions:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchingConfigError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_batching_parameters(text, path, base=base)


def _fields(options: BatchingOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in BatchingOptions.__dataclass_fields__}


# -- the scheduler ---------------------------------------------------------------------------------------------


@dataclass
class _Task:
    inputs: Mapping[str, np.ndarray]
    fetches: Sequence[str]
    size: int
    enqueued: float
    deadline: float | None  # monotonic seconds; None: no deadline
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    error: ServingStatus | None = None


@dataclass
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False

    @property
    def opened(self) -> float:
        return self.tasks[0].enqueued


Runner = Callable[[Mapping[str, np.ndarray], list[str], "float | None"], list[np.ndarray]]


class _Queue:
    """The batches of one loaded version's runs with one tensor signature."""

    def __init__(self, options: BatchingOptions, run: Runner, fetches: list[str]) -> None:
        self.options = options
        self.run = run
        self.fetches = fetches  # the signature's output tensors, in the order a batch fetches them
        self.batches: deque[_Batch] = deque()
        self.closed = False

    def ready(self, now: float) -> tuple[bool, float | None]:
        """Whether its first batch may run now; else when it may (None: not until more tasks come)."""
        if not self.batches:
            return False, None
        first = self.batches[0]
        if first.closed or len(self.batches) > 1:
            return True, None
        due = first.opened + self.options.batch_timeout_micros / 1e6
        return (True, None) if now >= due else (False, due)


class BatchScheduler:
    """SharedBatchScheduler: ``num_batch_threads`` threads that run the ready batches of every queue, in turn."""

    def __init__(self, threads: int, name: str = "batch_threads") -> None:
        self._cv = threading.Condition()
        self._queues: list[_Queue] = []
        self._next = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True) for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def add_queue(self, queue: _Queue) -> None:
        with self._cv:
            self._queues.append(queue)

    def remove_queue(self, queue: _Queue) -> None:
        """Forget a queue once what it holds has run."""
        with self._cv:
            queue.closed = True
            if not queue.batches and queue in self._queues:
                self._queues.remove(queue)

    def schedule(self, queue: _Queue, task: _Task) -> None:
        """Queue.Schedule: put ``task`` in the open batch, or refuse it as TF Serving's queue does."""
        options = queue.options
        if task.size > options.max_batch_size:
            raise ServingStatus(
                _INVALID, f"Task size {task.size} is larger than maximum input batch size {options.max_batch_size}"
            )
        with self._cv:
            if self._stopping:
                raise ServingStatus(grpc.StatusCode.UNAVAILABLE, "the batch scheduler is shutting down")
            batches = queue.batches
            open_batch = batches[-1] if batches and not batches[-1].closed else None
            if open_batch is None or open_batch.size + task.size > options.max_batch_size:
                if len(batches) >= options.max_enqueued_batches:
                    raise ServingStatus(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full; currently "
                        f"{len(batches)} batches enqueued and max_enqueued_batches is {options.max_enqueued_batches}",
                    )
                if open_batch is not None:
                    open_batch.closed = True
                batches.append(_Batch())
            batch = batches[-1]
            batch.tasks.append(task)
            batch.size += task.size
            if batch.size >= options.max_batch_size:
                batch.closed = True
            if queue not in self._queues:  # dropped by its version's retirement while this run was on its way
                self._queues.append(queue)
            self._cv.notify_all()

    def _take(self) -> tuple[_Queue | None, _Batch | None, float | None]:
        """The next ready batch, taking the queues in turn; else when the soonest open batch falls due."""
        now = time.monotonic()
        soonest: float | None = None
        count = len(self._queues)
        for offset in range(count):
            queue = self._queues[(self._next + offset) % count]
            ready, due = queue.ready(now)
            if ready:
                self._next = (self._next + offset + 1) % max(count, 1)
                batch = queue.batches.popleft()
                batch.closed = True
                if queue.closed and not queue.batches:
                    self._queues.remove(queue)
                return queue, batch, None
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        return None, None, soonest

    def _work(self) -> None:
        while True:
            with self._cv:
                while True:
                    queue, batch, due = self._take()
                    if batch is not None:
                        break
                    if self._stopping and not any(q.batches for q in self._queues):
                        return
                    self._cv.wait(None if due is None else max(0.0, due - time.monotonic()))
            assert queue is not None
            _process(queue, batch)

    def close(self, timeout: float = 30.0) -> None:
        """Run what is queued, then stop the threads."""
        with self._cv:
            self._stopping = True
            for queue in self._queues:
                for batch in queue.batches:
                    batch.closed = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _process(queue: _Queue, batch: _Batch) -> None:
    """BatchingSession::ProcessBatch: merge, run once, split; every task of the batch is told how it went."""
    try:
        outputs = _run_batch(queue, batch)
    except ServingStatus as exc:
        for task in batch.tasks:
            task.error = exc
            task.done.set()
        return
    except Exception as exc:  # a bug here must not leave a caller waiting for ever
        log.exception("batch of %d failed", batch.size)
        failure = ServingStatus(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        for task in batch.tasks:
            task.error = failure
            task.done.set()
        return
    for task, values in zip(batch.tasks, outputs, strict=True):
        task.outputs = values
        task.done.set()


def _run_batch(queue: _Queue, batch: _Batch) -> list[list[np.ndarray]]:
    now = time.monotonic()
    deadlines = [task.deadline for task in batch.tasks]
    if all(deadline is not None and deadline <= now for deadline in deadlines):
        raise ServingStatus(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "Run() timeout exceeded while waiting in batching queue"
        )
    timeout = None if any(deadline is None for deadline in deadlines) else max(deadlines) - now
    padding = queue.options.pad_to(batch.size) - batch.size
    merged = _merge_inputs(queue.options, batch.tasks, padding)
    combined = queue.run(merged, queue.fetches, timeout)
    sizes = [task.size for task in batch.tasks]
    per_tensor: dict[str, list[np.ndarray]] = {}
    for name, value in zip(queue.fetches, combined, strict=True):
        if value.ndim == 0:
            raise ServingStatus(_PRECONDITION, "Batched output tensor has 0 dimensions")
        if value.shape[0] != batch.size + padding:
            raise ServingStatus(
                _PRECONDITION,
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the "
                "input tensors",
            )
        per_tensor[name] = np.split(value, [*np.cumsum(sizes)[:-1].tolist(), batch.size])[: len(sizes)]
    return [[per_tensor[name][index] for name in task.fetches] for index, task in enumerate(batch.tasks)]


def _merge_inputs(options: BatchingOptions, tasks: list[_Task], padding: int) -> dict[str, np.ndarray]:
    """MergeInputTensors: each input of every task, concatenated along dimension 0, padded as configured."""
    merged: dict[str, np.ndarray] = {}
    for name in tasks[0].inputs:
        values = [np.asarray(task.inputs[name]) for task in tasks]
        if options.pad_variable_length_inputs:
            values = _padded(values)
        else:
            reference = values[0].shape[1:]
            if any(value.shape[1:] != reference for value in values[1:]):
                raise ServingStatus(
                    _PRECONDITION,
                    f"Tensors with name '{name}' from different tasks have different shapes and padding is turned "
                    "off. Set pad_variable_length_inputs to true, or ensure that all tensors with the same name have "
                    "equal dimensions starting with the first dim.",
                )
        if padding:
            values.append(np.repeat(values[-1][:1], padding, axis=0))
        merged[name] = values[0] if len(values) == 1 else np.concatenate(values, axis=0)
    return merged


def _padded(values: list[np.ndarray]) -> list[np.ndarray]:
    """AddPadding: every dimension but the 0th grown to the largest among the tasks, filled with the first value."""
    ranks = {value.ndim for value in values}
    if len(ranks) != 1:
        raise ServingStatus(_PRECONDITION, "All tensors in a batch must have the same rank to be padded")
    (rank,) = ranks
    if not 1 <= rank <= 6:
        raise ServingStatus(_INVALID, f"Only tensors with rank from 1 to 6 can be padded. Given rank: {rank}")
    largest = [max(value.shape[axis] for value in values) for axis in range(rank)]
    padded = []
    for value in values:
        widths = [(0, 0)] + [(0, largest[axis] - value.shape[axis]) for axis in range(1, rank)]
        if any(after for _, after in widths):
            fill = value.flat[0] if value.size else 0
            value = np.pad(value, widths, mode="constant", constant_values=fill)
        padded.append(value)
    return padded


def task_size(inputs: Mapping[str, Any]) -> int:
    """ComputeTensorBatchSize: the 0th dimension every input shares."""
    if not inputs:
        raise ServingStatus(_INVALID, "Batching Run() must have at least one input tensor")
    size = None
    for value in inputs.values():
        shape = np.shape(value)
        if not shape:
            raise ServingStatus(_INVALID, "Batching Run() input tensors must have at least one dimension")
        if size is None:
            size = shape[0]
        elif shape[0] != size:
            raise ServingStatus(_INVALID, "Batching Run() input tensors must have equal 0th-dimension size")
    assert size is not None
    return int(size)


class BatchingSession:
    """One loaded version's runs, batched through the shared scheduler (a queue per tensor signature)."""

    def __init__(self, scheduler: BatchScheduler, options: BatchingOptions, run: Runner) -> None:
        self.scheduler = scheduler
        self.options = options
        self._run = run
        self._queues: dict[tuple[frozenset[str], frozenset[str]], _Queue] = {}
        self._lock = threading.Lock()
        self._closed = False

    def run(self, feeds: Mapping[str, Any], fetches: Sequence[str], timeout: float | None) -> list[np.ndarray]:
        """Run as part of a batch: the values of ``fetches`` for this run's rows. Raises ServingStatus."""
        return self.wait(self.submit(feeds, fetches, timeout))

    def submit(self, feeds: Mapping[str, Any], fetches: Sequence[str], timeout: float | None) -> _Task:
        """Queue a run (refused at once with ServingStatus when it cannot be queued); :meth:`wait` gives its answer."""
        size = task_size(feeds)
        key = (frozenset(feeds), frozenset(fetches))
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                queue = _Queue(self.options, self._run, sorted(key[1]))
                if not self._closed:
                    self._queues[key] = queue
                self.scheduler.add_queue(queue)
            closed = self._closed
        now = time.monotonic()
        task = _Task(
            {name: np.asarray(value) for name, value in feeds.items()},
            list(fetches),
            size,
            now,
            None if timeout is None else now + timeout,
        )
        self.scheduler.schedule(queue, task)
        if closed:  # a request that held the version before it retired: its queue goes once it has run
            self.scheduler.remove_queue(queue)
        return task

    @staticmethod
    def wait(task: _Task) -> list[np.ndarray]:
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def close(self) -> None:
        """The version is going: its queues are dropped once what they hold has run."""
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
            self._closed = True
        for queue in queues:
            self.scheduler.remove_queue(queue)


class Batching:
    """``--enable_batching`` for a runtime: the shared scheduler, and which versions batch with which options.

    ``per_model`` is ``--enable_per_model_batching_parameters``: a version is batched only when its folder has a
    ``batching_params.pbtxt``, with the options written there (the thread pool stays the server's).
    """

    def __init__(self, options: BatchingOptions, *, per_model: bool = False) -> None:
        problems = options.problems()
        if problems:
            raise BatchingConfigError("; ".join(problems))
        self.options = options
        self.per_model = per_model
        self.scheduler = BatchScheduler(options.num_batch_threads, options.thread_pool_name)

    def session_for(self, path: Path, run: Runner) -> BatchingSession | None:
        """The batching session of the version at ``path``, or None when it is not batched. A per-model file that
        cannot be used fails the load (INVALID_ARGUMENT), as TF Serving's does."""
        options = self.options
        if self.per_model:
            params = path / PER_MODEL_FILE
            if not params.is_file():
                return None
            try:
                options = read_batching_parameters(params)
            except BatchingConfigError as exc:
                raise ServingStatus(_INVALID, str(exc)) from None
        return BatchingSession(self.scheduler, options, run)

    def close(self) -> None:
        self.scheduler.close()
