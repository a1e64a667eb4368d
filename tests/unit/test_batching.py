"""Batching of session runs (app.serving.batching) as TF Serving's BatchingSession merges, pads, splits and refuses.

The runner stands in for a session: it records what each batch fed, and answers every fetch with the rows it was
fed (times ten), so a task's answer shows which rows it got back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import grpc
import numpy as np
import pytest

from app.errors import ServingStatus
from app.serving.batching import (
    Batching,
    BatchingConfigError,
    BatchingOptions,
    BatchingSession,
    BatchScheduler,
    parse_batching_parameters,
    task_size,
)


class RecordingRunner:
    """A session that answers each fetch with its input "x" times ten, and remembers every batch it ran."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, feeds: Mapping[str, np.ndarray], fetches: list[str], timeout: float | None) -> list[np.ndarray]:
        self.batches.append(dict(feeds))
        self.started.set()
        assert self.release.wait(10), "the test never released the held batch"
        return [np.asarray(feeds["x"]) * 10 for _ in fetches]


@pytest.fixture
def scheduler() -> Iterator[BatchScheduler]:
    found = BatchScheduler(threads=1)
    yield found
    found.close(timeout=10)


def session(scheduler: BatchScheduler, runner: RecordingRunner, **options) -> BatchingSession:
    return BatchingSession(scheduler, BatchingOptions(**{"num_batch_threads": 1, **options}), runner)


def run_in_threads(batching: BatchingSession, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    answers: list[list[np.ndarray] | BaseException] = [None] * len(feeds)  # type: ignore[list-item]

    def call(index: int) -> None:
        try:
            answers[index] = batching.run(feeds[index], ["y"], timeout=10)
        except BaseException as exc:  # handed to the test thread
            answers[index] = exc

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(feeds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    return answers  # type: ignore[return-value]


def test_runs_of_the_same_tensors_are_merged_and_each_gets_its_own_rows_back(scheduler):
    runner = RecordingRunner()
    # A batch that only runs when full (the timeout is far away): three one-row runs must become one run of three.
    batching = session(scheduler, runner, max_batch_size=3, batch_timeout_micros=60_000_000)
    answers = run_in_threads(batching, [{"x": np.array([[float(i)]], np.float32)} for i in range(3)])
    assert len(runner.batches) == 1
    assert sorted(runner.batches[0]["x"].ravel().tolist()) == [0.0, 1.0, 2.0]
    assert [answer[0].tolist() for answer in answers] == [[[0.0]], [[10.0]], [[20.0]]]


def test_a_batch_is_padded_to_the_next_allowed_size_with_the_first_row_of_its_last_task(scheduler):
    runner = RecordingRunner()
    batching = session(scheduler, runner, max_batch_size=4, allowed_batch_sizes=(2, 4))
    (answer,) = batching.run({"x": np.array([[1.0], [2.0], [3.0]], np.float32)}, ["y"], timeout=None)
    assert runner.batches[0]["x"].ravel().tolist() == [1.0, 2.0, 3.0, 1.0]
    assert answer.ravel().tolist() == [10.0, 20.0, 30.0]  # the padding row is not handed back


def test_a_task_larger_than_the_largest_batch_is_refused(scheduler):
    batching = session(scheduler, RecordingRunner(), max_batch_size=2)
    with pytest.raises(ServingStatus) as refused:
        batching.run({"x": np.zeros((3, 1), np.float32)}, ["y"], timeout=None)
    assert refused.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message == "Task size 3 is larger than maximum input batch size 2"


def test_a_full_queue_refuses_at_once_with_unavailable(scheduler):
    runner = RecordingRunner(hold=True)
    batching = session(scheduler, runner, max_batch_size=1, max_enqueued_batches=1)
    first = batching.submit({"x": np.zeros((1, 1), np.float32)}, ["y"], timeout=None)
    assert runner.started.wait(10)  # the only thread is busy with the first batch
    second = batching.submit({"x": np.ones((1, 1), np.float32)}, ["y"], timeout=None)  # the one batch that may wait
    with pytest.raises(ServingStatus) as refused:
        batching.submit({"x": np.ones((1, 1), np.float32)}, ["y"], timeout=None)
    assert refused.value.status == grpc.StatusCode.UNAVAILABLE
    assert refused.value.message == (
        "The batch scheduling queue to which this task was submitted is full; currently 1 batches enqueued and "
        "max_enqueued_batches is 1"
    )
    runner.release.set()
    assert batching.wait(first)[0].tolist() == [[0.0]]
    assert batching.wait(second)[0].tolist() == [[10.0]]


def test_a_batch_whose_every_deadline_passed_in_the_queue_is_not_run(scheduler):
    runner = RecordingRunner(hold=True)
    batching = session(scheduler, runner, max_batch_size=1)
    first = batching.submit({"x": np.zeros((1, 1), np.float32)}, ["y"], timeout=None)
    assert runner.started.wait(10)
    late = batching.submit({"x": np.ones((1, 1), np.float32)}, ["y"], timeout=0.0)
    runner.release.set()
    batching.wait(first)
    with pytest.raises(ServingStatus) as refused:
        batching.wait(late)
    assert refused.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.message == "Run() timeout exceeded while waiting in batching queue"
    assert len(runner.batches) == 1


def test_tensors_of_different_shapes_fail_their_batch_unless_padding_is_on(scheduler):
    runner = RecordingRunner()
    strict = session(scheduler, runner, max_batch_size=2, batch_timeout_micros=60_000_000)
    with pytest.raises(ServingStatus) as refused:
        run_in_threads(strict, [{"x": np.zeros((1, 2), np.float32)}, {"x": np.zeros((1, 3), np.float32)}])
    assert refused.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert "from different tasks have different shapes and padding is turned off" in refused.value.message

    padded = session(
        scheduler, runner, max_batch_size=2, batch_timeout_micros=60_000_000, pad_variable_length_inputs=True
    )
    answers = run_in_threads(padded, [{"x": np.array([[7.0, 8.0]], np.float32)}, {"x": np.ones((1, 3), np.float32)}])
    merged = runner.batches[-1]["x"]
    assert merged.shape == (2, 3)
    assert [7.0, 8.0, 7.0] in merged.tolist()  # padded with the tensor's own first value
    assert sorted(answer[0].shape for answer in answers) == [(1, 3), (1, 3)]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "Batching Run() must have at least one input tensor"),
        ({"x": np.float32(1.0)}, "Batching Run() input tensors must have at least one dimension"),
        ({"x": np.zeros(2), "k": np.zeros(3)}, "Batching Run() input tensors must have equal 0th-dimension size"),
    ],
)
def test_inputs_that_cannot_be_batched_are_refused(inputs, message):
    with pytest.raises(ServingStatus) as refused:
        task_size(inputs)
    assert refused.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.message == message


def test_parameters_file_fields_and_defaults():
    options = parse_batching_parameters(
        "max_batch_size { value: 16 } batch_timeout_micros { value: 2000 } allowed_batch_sizes: 8 "
        "allowed_batch_sizes: 16 max_enqueued_batches { value: 4 } num_batch_threads { value: 2 } "
        'thread_pool_name { value: "pool" } pad_variable_length_inputs: true',
        "params.txt",
    )
    assert options == BatchingOptions(16, 2000, 4, 2, "pool", (8, 16), True)
    defaults = parse_batching_parameters("", "empty.txt")
    assert (defaults.max_batch_size, defaults.batch_timeout_micros, defaults.max_enqueued_batches) == (1000, 0, 10)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "Last entry in allowed_batch_sizes must match"),
        ("allowed_batch_sizes: 4 allowed_batch_sizes: 2 max_batch_size { value: 2 }", "monotonically increasing"),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be positive"),
        ("max_batch_sizes { value: 1 }", 'has no field named "max_batch_sizes"'),
    ],
)
def test_a_parameters_file_tf_serving_would_refuse_is_refused_naming_the_file(text, words):
    with pytest.raises(BatchingConfigError) as refused:
        parse_batching_parameters(text, "/etc/batching.txt")
    assert str(refused.value).startswith("/etc/batching.txt: ")
    assert words in str(refused.value)


def test_per_model_parameters_batch_only_versions_that_have_a_file(tmp_path):
    batching = Batching(BatchingOptions(num_batch_threads=1), per_model=True)
    try:
        plain, tuned, broken = (tmp_path / name for name in ("plain", "tuned", "broken"))
        for folder in (plain, tuned, broken):
            folder.mkdir()
        (tuned / "batching_params.pbtxt").write_text("max_batch_size { value: 4 }", encoding="utf-8")
        (broken / "batching_params.pbtxt").write_text("max_batch_size: 4", encoding="utf-8")
        runner = RecordingRunner()
        assert batching.session_for(plain, runner) is None
        found = batching.session_for(tuned, runner)
        assert found is not None and found.options.max_batch_size == 4
        with pytest.raises(ServingStatus) as refused:
            batching.session_for(broken, runner)
        assert refused.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert str(broken / "batching_params.pbtxt") in refused.value.message
    finally:
        batching.close()
