"""The latent_search_model servable, loaded as TF Serving loads it: exact top-k against a numpy reference."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from app.modelzoo.export import WARMUP_RELATIVE_PATH
from app.modelzoo.search import SEARCH_SIGNATURE, SIZE_SIGNATURE, LatentSearch, export_search_model
from app.serving import tensors

N, D = 4_000, 4_096
SMALL_N, SMALL_SHAPE = 64, (4, 4, 8)
# Ops that would call back into Python, which TF Serving cannot run.
PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


class Servable:
    """A SavedModel loaded like TF Serving's SavedModelBundle: TF1 Session, "serve" tag, run by tensor names."""

    def __init__(self, path: Path) -> None:
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))

    def run(self, signature: str = SEARCH_SIGNATURE, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        sig = self.meta_graph.signature_def[signature]
        feed = {sig.inputs[alias].name: value for alias, value in inputs.items()}
        return self.session.run({alias: info.name for alias, info in sig.outputs.items()}, feed_dict=feed)

    def search(self, target_latent: np.ndarray, k: int) -> dict[str, np.ndarray]:
        return self.run(target_latent=np.asarray(target_latent, np.float32), k_num=np.array(k, np.int32))


def squared_distances(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Reference [B, N] squared L2 distances, in float64."""
    flat = gallery.reshape(len(gallery), -1).astype(np.float64)
    q = queries.reshape(len(queries), -1).astype(np.float64)
    return (flat * flat).sum(1)[None, :] - 2.0 * q @ flat.T + (q * q).sum(1)[:, None]


def filenames_for(count: int) -> list[str]:
    return [f"faces/person_{i:05d}.jpg" for i in range(count)]


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return np.random.default_rng(20240611).standard_normal((N, D), dtype=np.float32)


@pytest.fixture(scope="module")
def queries(gallery: np.ndarray) -> np.ndarray:
    """A near-copy of one gallery face (its own nearest neighbour) and two unrelated latents."""
    rng = np.random.default_rng(7)
    near = gallery[3321] + 0.1 * rng.standard_normal(D, dtype=np.float32)
    return np.stack([near, *rng.standard_normal((2, D), dtype=np.float32)])


@pytest.fixture(scope="module")
def reference(gallery: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices [B, 51], distances [B, 51]) nearest first, with the gaps checked so that no tie can flip an index."""
    distances = squared_distances(gallery, queries)
    order = np.argsort(distances, axis=1)[:, :51]
    nearest = np.take_along_axis(distances, order, axis=1)
    # Float32 distances here are off by ~1e-3 at most; neighbours closer than that could swap places.
    assert np.diff(nearest, axis=1).min() > 1e-2, "the seeded gallery has near-ties; pick another seed"
    return order, nearest


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, gallery: np.ndarray) -> Path:
    return export_search_model(tmp_path_factory.mktemp("search") / "1", gallery, filenames_for(N))


@pytest.fixture(scope="module")
def servable(exported: Path):
    loaded = Servable(exported)
    yield loaded
    loaded.session.close()


@pytest.fixture(scope="module")
def small_gallery() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((SMALL_N, *SMALL_SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def small_exported(tmp_path_factory: pytest.TempPathFactory, small_gallery: np.ndarray) -> Path:
    return export_search_model(tmp_path_factory.mktemp("search_small") / "1", small_gallery, filenames_for(SMALL_N))


@pytest.mark.parametrize("k", [1, 5, 50])
def test_one_query_matches_numpy(servable: Servable, queries, reference, k: int) -> None:
    want_indices, want_distances = reference
    for row, query in enumerate(queries):
        out = servable.search(query[None], k)
        assert out["indices"].dtype == np.int32
        assert out["xvals"].shape == out["indices"].shape == out["filenames"].shape == (1, k)
        np.testing.assert_array_equal(out["indices"][0], want_indices[row, :k])
        np.testing.assert_allclose(out["xvals"][0], want_distances[row, :k], rtol=1e-4, atol=1e-3)
        assert [f.decode() for f in out["filenames"][0]] == [filenames_for(N)[i] for i in want_indices[row, :k]]
    assert servable.search(queries[:1], 1)["indices"][0, 0] == 3321


def test_a_batch_of_queries_is_answered_row_by_row(servable: Servable, queries, reference) -> None:
    out = servable.search(queries, 5)
    assert out["xvals"].shape == (len(queries), 5)
    np.testing.assert_array_equal(out["indices"], reference[0][:, :5])
    np.testing.assert_allclose(out["xvals"], reference[1][:, :5], rtol=1e-4, atol=1e-3)
    assert servable.search(queries[:0], 3)["indices"].shape == (0, 3)


def test_a_gallery_face_is_at_distance_zero_from_itself(servable: Servable, gallery: np.ndarray) -> None:
    out = servable.search(gallery[[17, 3900]], 2)
    np.testing.assert_array_equal(out["indices"][:, 0], [17, 3900])
    # Float32 cancellation leaves a small residue (never a negative distance).
    assert np.all(out["xvals"][:, 0] >= 0.0)
    assert np.all(out["xvals"][:, 0] < 1e-2)


@pytest.mark.parametrize(
    ("k", "message"),
    [
        (N + 1, f"k_num {N + 1} is larger than the gallery ({N} faces)"),
        (0, "k_num 0 must be at least 1"),
        (-3, "k_num -3 must be at least 1"),
    ],
)
def test_k_outside_the_gallery_is_refused(servable: Servable, queries, k: int, message: str) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        servable.search(queries[:1], k)


def test_a_nan_query_is_refused(servable: Servable, queries) -> None:
    query = queries[:1].copy()
    query[0, 5] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="target_latent holds NaN or Inf"):
        servable.search(query, 3)


def test_gallery_size_tells_count_and_latent_shape(servable: Servable, small_exported: Path) -> None:
    out = servable.run(SIZE_SIGNATURE)
    assert out["size"].dtype == np.int64 and out["size"].shape == ()
    assert out["size"] == N
    np.testing.assert_array_equal(out["latent_shape"], [D])
    small = Servable(small_exported)
    try:
        np.testing.assert_array_equal(small.run(SIZE_SIGNATURE)["latent_shape"], SMALL_SHAPE)
    finally:
        small.session.close()


def test_signature_shapes_come_from_the_gallery(servable: Servable) -> None:
    search = servable.meta_graph.signature_def[SEARCH_SIGNATURE]
    assert [d.size for d in search.inputs["target_latent"].tensor_shape.dim] == [-1, D]
    assert search.inputs["k_num"].dtype == tf.int32.as_datatype_enum
    assert search.inputs["k_num"].tensor_shape.dim == []
    assert set(search.outputs) == {"xvals", "indices", "filenames"}
    assert set(servable.meta_graph.signature_def[SIZE_SIGNATURE].inputs) == set()


def test_a_non_flat_latent_shape_works(small_exported: Path, small_gallery: np.ndarray) -> None:
    small = Servable(small_exported)
    try:
        queries = small_gallery[[5, 40]] + 0.05
        out = small.search(queries, SMALL_N)
    finally:
        small.session.close()
    distances = squared_distances(small_gallery, queries)
    np.testing.assert_array_equal(out["indices"], np.argsort(distances, axis=1))
    np.testing.assert_allclose(out["xvals"], np.sort(distances, axis=1), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(out["indices"][:, 0], [5, 40])


def test_a_query_of_the_wrong_latent_shape_is_refused_in_the_graph(small_gallery: np.ndarray) -> None:
    # Python's Session refuses such a feed before the graph runs, but TF Serving does not check
    # shapes, so the graph must; trace the search with an unknown shape to reach that check.
    module = LatentSearch(small_gallery, filenames_for(SMALL_N))
    unchecked = tf.function(
        module._search, input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.int32)]
    )
    np.testing.assert_array_equal(unchecked(small_gallery[:1], 1)["indices"], [[0]])
    # 128 values, as many as one latent holds, but in the wrong shape: a reshape alone would accept it.
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=re.escape("shape [8,16] but the gallery latents have shape [4,4,8]")
    ):
        unchecked(np.zeros((1, 8, 16), np.float32), 1)


def test_the_graph_has_only_core_ops_and_no_gallery_sized_temporaries(small_exported: Path) -> None:
    saved_model = saved_model_pb2.SavedModel.FromString((small_exported / "saved_model.pb").read_bytes())
    graph_def = saved_model.meta_graphs[0].graph_def
    op_types = {node.op for node in graph_def.node}
    op_types |= {node.op for function in graph_def.library.function for node in function.node_def}
    assert not op_types & PYTHON_OPS
    assert "MatMul" in op_types and "TopKV2" in op_types

    # The restored function's graph has static shapes: only the variable read may be as big as the
    # gallery (unknown batch dimensions count as 1, so [B, N, D] from `latents - query` is caught).
    gallery_elements = SMALL_N * math.prod(SMALL_SHAPE)
    search = tf.saved_model.load(str(small_exported)).search.concrete_functions[0]
    big = [
        (op.type, output.shape)
        for op in search.graph.get_operations()
        for output in op.outputs
        if output.shape.rank is None or math.prod(d or 1 for d in output.shape) >= gallery_elements
    ]
    assert [op_type for op_type, _ in big] == ["ReadVariableOp"], big


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the RSS peak")
def test_a_search_does_not_copy_the_gallery(servable: Servable, queries) -> None:
    def peak_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))

    def rss_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    servable.search(queries, 50)  # first-call allocations are not per-request costs
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
    except OSError:
        pytest.skip("cannot reset the RSS peak here")
    before = rss_kb()
    for _ in range(3):
        servable.search(queries, 50)
    grown = (peak_kb() - before) * 1024
    assert grown < 0.25 * N * D * 4, f"a search raised the RSS peak by {grown / 2**20:.0f} MiB"


def test_every_warmup_record_runs(exported: Path, servable: Servable) -> None:
    signatures = []
    for record in tf.compat.v1.io.tf_record_iterator(str(exported / WARMUP_RELATIVE_PATH)):
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        inputs = {alias: tensors.from_tensor_proto(proto) for alias, proto in request.inputs.items()}
        signature = request.model_spec.signature_name or SEARCH_SIGNATURE
        out = servable.run(signature, **inputs)
        signatures.append(signature)
        if signature == SEARCH_SIGNATURE:
            assert out["indices"].tolist() == [[0, *out["indices"][0, 1:].tolist()]]
            assert out["indices"].shape == (1, 5)
    assert sorted(signatures) == sorted([SEARCH_SIGNATURE, SIZE_SIGNATURE])


@pytest.mark.parametrize(
    ("latents", "names", "message"),
    [
        (np.zeros((0, 8), np.float32), [], "gallery is empty"),
        (np.zeros(8, np.float32), ["a"] * 8, "at least one latent dimension"),
        (np.zeros((2, 0), np.float32), ["a", "b"], "at least one value"),
        (np.zeros((3, 8), np.float32), ["a", "b"], "2 filenames for 3 latents"),
        (np.zeros((2, 8), np.float32), ["a", b"b"], "filename 1 is bytes"),
        (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), ["a", "b"], "latent 0 ('a') holds NaN/Inf"),
        (np.array([[1.0, 2.0], [np.inf, 0.0]]), ["a", "b"], "latent 1 ('b') holds NaN/Inf"),
        (np.full((1, 4), 1e20, np.float32), ["a"], "too large for float32"),
        (np.array([["a", "b"]]), ["a"], "must be real numbers"),
    ],
)
def test_export_refuses_a_bad_gallery(tmp_path: Path, latents: np.ndarray, names: list, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        export_search_model(tmp_path / "1", latents, names)
    assert not (tmp_path / "1").exists()


def test_float64_latents_are_cast_and_extra_files_ship(tmp_path: Path) -> None:
    latents = np.arange(12, dtype=np.float64).reshape(3, 4)
    version = export_search_model(tmp_path / "2", latents, ["a", "b", "c"], extra_files={"thumbnails/0.jpg": b"x"})
    assert (version / "assets.extra" / "thumbnails" / "0.jpg").read_bytes() == b"x"
    loaded = Servable(version)
    try:
        out = loaded.search(latents[2:], 3)
    finally:
        loaded.session.close()
    np.testing.assert_array_equal(out["indices"], [[2, 1, 0]])
    np.testing.assert_allclose(out["xvals"], [[0.0, 64.0, 256.0]])
    assert out["filenames"].tolist() == [[b"c", b"b", b"a"]]


@pytest.mark.parametrize("count", [1023, 1024, 1025, 3 * 1024 + 7])
def test_two_step_top_k_is_exact_across_block_edges(tmp_path: Path, count: int) -> None:
    # The best faces sit at the edges of blocks and in the padded last block; k reaches the whole gallery.
    from app.modelzoo.search import BLOCK_ROWS

    rng = np.random.default_rng(count)
    gallery = rng.standard_normal((count, 8)).astype(np.float32)
    query = rng.standard_normal((2, 8)).astype(np.float32)
    for row in {0, min(count, BLOCK_ROWS) - 1, count - 1, min(count - 1, BLOCK_ROWS)}:
        gallery[row] = query[0] + 0.001 * row
    version = export_search_model(tmp_path / "1", gallery, filenames_for(count))
    loaded = Servable(version)
    try:
        for k in (1, 4, 37, count):
            out = loaded.search(query, k)
            want = np.argsort(squared_distances(gallery, query), axis=1, kind="stable")[:, :k]
            assert out["indices"].tolist() == want.tolist()
        assert int(loaded.run(SIZE_SIGNATURE)["size"]) == count
    finally:
        loaded.session.close()
