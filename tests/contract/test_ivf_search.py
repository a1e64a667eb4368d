"""The IVF latent_search_model: the exact search's contract, recall against exact search, exact distances,
fixed-size blocks, the stored probe default, the 2 GB variable limit, and loading the TF Serving way."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import kernels

from app.modelzoo import ivf
from app.modelzoo.export import WARMUP_RELATIVE_PATH
from app.modelzoo.search import SEARCH_SIGNATURE, SERVABLE_NAME, SIZE_SIGNATURE, export_search_model
from app.serving.base import ModelRef
from app.serving.runtime import ModelRuntime
from tests.support.search_servables import (
    LoadedSearch,
    clustered_faces,
    filenames_for,
    recall_at,
    squared_distances,
)

N, D, CLUSTERS, LISTS = 4_000, 16, 300, 32


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return clustered_faces(N, D, CLUSTERS, seed=11)


@pytest.fixture(scope="module")
def queries(gallery: np.ndarray) -> np.ndarray:
    """New faces near gallery faces (enrolled people) and faces of new people."""
    rng = np.random.default_rng(5)
    near = gallery[rng.choice(N, 40, replace=False)] + 0.05 * rng.standard_normal((40, D)).astype(np.float32)
    unseen = clustered_faces(40, D, 40, seed=99)
    return np.concatenate([near, unseen]).astype(np.float32)


@pytest.fixture(scope="module")
def training(gallery: np.ndarray) -> ivf.IvfTraining:
    return ivf.train_ivf(gallery, lists=LISTS, seed=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, gallery, training) -> Path:
    return ivf.export_ivf_search_model(tmp_path_factory.mktemp("ivf") / "1", gallery, filenames_for(N), training)


@pytest.fixture(scope="module")
def servable(exported: Path):
    loaded = LoadedSearch(exported)
    yield loaded
    loaded.close()


def test_recall_at_10_against_exact_search_at_the_default_probes(servable: LoadedSearch, gallery, queries) -> None:
    found = servable.search(queries, 10)["indices"]
    truth = np.argsort(squared_distances(gallery, queries), axis=1)[:, :10]
    # 8 of 32 lists on clustered faces: measured 0.99+; the margin keeps the test about the method, not luck.
    assert recall_at(found, truth) >= 0.95


def _stored(version: Path, fragment: str) -> np.ndarray:
    """The value of the variable of a saved version whose checkpoint name contains ``fragment``."""
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    (name,) = [name for name in reader.get_variable_to_shape_map() if fragment in name]
    return reader.get_tensor(name)


def distance_error_bound(version: Path, distances: np.ndarray) -> np.ndarray:
    """How far a reported distance may be from numpy's, by what the version stores.

    Each stored value is within half a fixed-point step (the axis's range / 65534) of the face's rotated
    value, so a distance d is off by at most 2 sqrt(d) |e| + |e|^2 with |e| <= sqrt(D) * step / 2; float32
    arithmetic adds ~1e-6 relative.
    """
    error = math.sqrt(D) * float(np.max(_stored(version, "fine_scale"))) / 2
    return 2 * np.sqrt(distances) * error + error**2 + 1e-6 * (1 + distances)


def test_distances_are_the_exact_squared_l2_of_the_returned_faces(
    servable: LoadedSearch, exported: Path, gallery, queries
) -> None:
    out = servable.search(queries, 10)
    want = np.take_along_axis(squared_distances(gallery, queries), out["indices"].astype(np.int64), axis=1)
    assert np.all(np.abs(out["xvals"] - want) <= distance_error_bound(exported, want))
    assert np.all(np.diff(out["xvals"], axis=1) >= 0), "distances must come nearest first"
    assert [f.decode() for f in out["filenames"][0]] == [filenames_for(N)[i] for i in out["indices"][0]]


def test_a_gallery_face_finds_itself_first(servable: LoadedSearch, gallery) -> None:
    out = servable.search(gallery[[17, 3999]], 3)
    np.testing.assert_array_equal(out["indices"][:, 0], [17, 3999])
    assert np.all(out["xvals"][:, 0] < 1e-6)  # float32 cancellation in ||u||^2 - 2 u.x + ||x||^2


def test_probes_is_optional_and_its_default_is_stored_with_the_version(servable: LoadedSearch, queries) -> None:
    signature = servable.meta_graph.signature_def[SEARCH_SIGNATURE]
    assert set(signature.inputs) == {"target_latent", "k_num", "probes"}
    stored = tf.make_ndarray(signature.defaults["probes"])
    assert stored.dtype == np.int32 and stored.shape == () and int(stored) == ivf.default_probes(LISTS)
    default = servable.search(queries, 10)
    explicit = servable.search(queries, 10, probes=np.array(int(stored), np.int32))
    np.testing.assert_array_equal(default["indices"], explicit["indices"])
    one = servable.search(queries, 10, probes=np.array(1, np.int32))
    assert not np.array_equal(one["indices"], default["indices"]), "probing one list should answer differently"


@pytest.mark.parametrize("probes", [LISTS, 10 * LISTS])
def test_probing_every_list_is_exact_search(servable: LoadedSearch, gallery, queries, probes: int) -> None:
    out = servable.search(queries, 10, probes=np.array(probes, np.int32))
    distances = squared_distances(gallery, queries)
    np.testing.assert_array_equal(out["indices"], np.argsort(distances, axis=1)[:, :10])


def test_k_larger_than_the_probed_lists_still_gets_k_faces(
    servable: LoadedSearch, exported: Path, gallery, queries
) -> None:
    # One probe holds ~N/32 faces; asking for all N makes the search take as many lists as needed.
    out = servable.search(queries[:2], N, probes=np.array(1, np.int32))
    for row in out["indices"]:
        np.testing.assert_array_equal(np.sort(row), np.arange(N))  # every face once
    want = np.take_along_axis(squared_distances(gallery, queries[:2]), out["indices"].astype(np.int64), axis=1)
    assert np.all(np.abs(out["xvals"] - want) <= distance_error_bound(exported, want))
    assert np.all(np.diff(out["xvals"], axis=1) >= 0)


@pytest.mark.parametrize(
    ("k", "probes", "message"),
    [
        (N + 1, 8, f"k_num {N + 1} is larger than the gallery ({N} faces)"),
        (0, 8, "k_num 0 must be at least 1"),
        (-3, 8, "k_num -3 must be at least 1"),
        (5, 0, "probes 0 must be at least 1"),
    ],
)
def test_bad_k_or_probes_is_refused(servable: LoadedSearch, queries, k: int, probes: int, message: str) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        servable.search(queries[:1], k, probes=np.array(probes, np.int32))


def test_a_nan_query_is_refused(servable: LoadedSearch, queries) -> None:
    query = queries[:1].copy()
    query[0, 3] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="target_latent holds NaN or Inf"):
        servable.search(query, 3)


def test_a_query_of_the_wrong_latent_shape_is_refused_in_the_graph(training) -> None:
    gallery = clustered_faces(200, D, 20, seed=1).reshape(200, 4, 4)
    module = ivf.IvfSearch(gallery, filenames_for(200), ivf.train_ivf(gallery, lists=4))
    unchecked = tf.function(
        module._search,
        input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)],
    )
    np.testing.assert_array_equal(unchecked(gallery[:1], 1, 2)["indices"], [[0]])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=re.escape("shape [2,8] but the gallery latents have shape [4,4]")
    ):
        unchecked(np.zeros((1, 2, 8), np.float32), 1, 2)


def test_gallery_size_and_signature_shapes(servable: LoadedSearch) -> None:
    out = servable.run(SIZE_SIGNATURE)
    assert out["size"] == N and out["size"].dtype == np.int64
    np.testing.assert_array_equal(out["latent_shape"], [D])
    search = servable.meta_graph.signature_def[SEARCH_SIGNATURE]
    assert [d.size for d in search.inputs["target_latent"].tensor_shape.dim] == [-1, D]
    assert set(search.outputs) == {"xvals", "indices", "filenames"}


def test_a_batch_is_answered_row_by_row(servable: LoadedSearch, queries) -> None:
    batch = servable.search(queries[:8], 10)
    for row in range(8):
        single = servable.search(queries[row : row + 1], 10)
        np.testing.assert_array_equal(batch["indices"][row], single["indices"][0])
        np.testing.assert_allclose(batch["xvals"][row], single["xvals"][0], rtol=0, atol=1e-6)  # float32 sums
    assert servable.search(queries[:0], 3)["indices"].shape == (0, 3)


def test_lists_are_runs_of_fixed_size_blocks_not_padded_to_the_longest() -> None:
    # Very uneven lists: lists trained on 1,000 faces of 200 people, then a crowd of 3,000 faces of one more
    # person added, all of whom go to one list.
    rng = np.random.default_rng(8)
    people = clustered_faces(1000, D, 200, seed=4)
    crowd = np.tile(clustered_faces(1, D, 1, seed=2), (3000, 1)) + 1e-3 * rng.standard_normal((3000, D))
    gallery = np.concatenate([crowd, people]).astype(np.float32)
    module = ivf.IvfSearch(gallery, filenames_for(len(gallery)), ivf.train_ivf(people, lists=16, seed=0))
    sizes = module.list_sizes
    assert sizes.max() >= 20 * max(1, np.median(sizes)), f"the lists should be very uneven: {sorted(sizes)}"
    blocks = -(-sizes // ivf.BLOCK_FACES)
    np.testing.assert_array_equal(module.block_count.numpy(), blocks)
    stored = sum(int(part.shape[0]) for part in module.faces.parts)
    assert stored == (blocks.sum() + 1) * ivf.BLOCK_FACES  # each list's blocks, and one padding block
    assert stored < len(sizes) * sizes.max() / 4  # far from every list padded to the longest
    # Probing every list finds the 10 nearest (the crowd's are near-ties: compared by distance, within 1e-4).
    queries = gallery[[0, 3500]]
    out = module.search(queries, 10, 16)
    nearest = np.sort(squared_distances(gallery, queries), axis=1)[:, :10]
    np.testing.assert_allclose(out["xvals"].numpy(), nearest, rtol=0, atol=1e-4)


def test_a_shortlist_over_its_cap_is_narrowed_to_the_best_scan_scores_that_fit(
    monkeypatch: pytest.MonkeyPatch, gallery, queries
) -> None:
    # 8 of the 16 axes scanned: the scan's margin takes in far more than 200 faces a query. With a cap of
    # 200 each row narrows its margin until ~200 fit, and those still hold most of the exact 10 nearest;
    # without the halvings (a margin of 0) only the scan's own k best are re-ranked.
    training = ivf.train_ivf(gallery, lists=LISTS, seed=3, scan_dims=8)
    distances = squared_distances(gallery, queries)
    truth = np.argsort(distances, axis=1)[:, :10]
    monkeypatch.setattr(ivf, "SHORTLIST_MAX", 200)
    stored = ivf.SHORTLIST_BISECTIONS
    recall = {}
    for halvings in (0, stored):
        monkeypatch.setattr(ivf, "SHORTLIST_BISECTIONS", halvings)
        out = ivf.IvfSearch(gallery, filenames_for(N), training).search(queries, 10, LISTS)
        found = out["indices"].numpy()
        recall[halvings] = recall_at(found, truth)
        want = np.take_along_axis(distances, found.astype(np.int64), axis=1)
        np.testing.assert_allclose(out["xvals"].numpy(), want, rtol=0, atol=1e-4)
    assert recall[stored] >= 0.75
    assert recall[stored] >= recall[0] + 0.3, recall


def test_ties_past_the_shortlist_cap_still_answer(monkeypatch: pytest.MonkeyPatch, gallery, training) -> None:
    # 100 copies of one face: at the k-th best score alone 100 faces tie, more than the cap, so no margin
    # fits; the search keeps the cap's best scores and answers with copies at distance ~0.
    monkeypatch.setattr(ivf, "SHORTLIST_MAX", 48)
    copies = np.concatenate([np.tile(gallery[:1], (100, 1)), gallery[1:]])
    module = ivf.IvfSearch(copies, filenames_for(len(copies)), training)
    out = module.search(gallery[:1], 10, LISTS)
    assert set(out["indices"].numpy()[0].tolist()) <= set(range(100))
    assert np.all(out["xvals"].numpy() < 1e-5)


def test_the_kth_best_scan_score_comes_from_the_best_blocks() -> None:
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((3, 40 * ivf.BLOCK_FACES)).astype(np.float32)
    scores[1, :96] = 5.0  # ties across whole blocks
    scores[2, 5 * ivf.BLOCK_FACES :] = -np.inf  # padding blocks
    for k in (1, 10, 64, 100):
        got = ivf.IvfSearch._kth_best(tf.constant(scores), tf.constant(k)).numpy()
        np.testing.assert_array_equal(got, -np.sort(-scores, axis=1)[:, k - 1])


def _variable_bytes(version: Path) -> dict[str, int]:
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    sizes = {}
    for name in reader.get_variable_to_shape_map():
        if "OPTIMIZER_SLOT" in name or name.startswith("_CHECKPOINTABLE"):
            continue
        value = reader.get_tensor(name)
        sizes[name] = sum(len(v) for v in value.ravel()) if value.dtype == object else value.nbytes
    return sizes


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_no_variable_holds_more_than_the_limit_and_the_answers_do_not_change(
    tmp_path: Path, gallery, queries, training, kind: str
) -> None:
    # The 2 GiB limit scaled down so that this small gallery is split (an exact part holds at least one block
    # of 1,024 faces: 68 KiB here).
    limit = 70_000 if kind == "exact" else 8_192
    names = filenames_for(N)
    if kind == "exact":
        whole = export_search_model(tmp_path / "whole" / "1", gallery, names)
        split = export_search_model(tmp_path / "split" / "1", gallery, names, max_variable_bytes=limit)
    else:
        whole = ivf.export_ivf_search_model(tmp_path / "whole" / "1", gallery, names, training)
        split = ivf.export_ivf_search_model(
            tmp_path / "split" / "1", gallery, names, training, max_variable_bytes=limit
        )
    sizes = _variable_bytes(split)
    # Strings count their bytes; a part's TensorProto adds a few bytes per string, within the margin of row_parts.
    assert max(sizes.values()) <= limit, sorted(sizes.items(), key=lambda item: -item[1])[:3]
    assert len(sizes) >= len(_variable_bytes(whole)) + 4, "the gallery should be split into many variables"
    a, b = LoadedSearch(whole), LoadedSearch(split)
    try:
        for k in (1, 10, N):
            left, right = a.search(queries, k), b.search(queries, k)
            for alias in ("indices", "xvals", "filenames"):
                np.testing.assert_array_equal(left[alias], right[alias])
    finally:
        a.close()
        b.close()


def test_every_warmup_record_runs(exported: Path, servable: LoadedSearch) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    from app.serving import tensors

    signatures = []
    for record in tf.compat.v1.io.tf_record_iterator(str(exported / WARMUP_RELATIVE_PATH)):
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        inputs = {alias: tensors.from_tensor_proto(proto) for alias, proto in request.inputs.items()}
        signature = request.model_spec.signature_name or SEARCH_SIGNATURE
        out = servable.run(signature, **inputs)
        signatures.append(signature)
        if signature == SEARCH_SIGNATURE:
            assert "probes" not in inputs  # the warmup exercises the stored default
            assert out["indices"][0, 0] == 0
    assert sorted(signatures) == sorted([SEARCH_SIGNATURE, SIZE_SIGNATURE])


def _serving_config(tmp_path: Path, exported: Path) -> Path:
    base = tmp_path / "serving_models" / SERVABLE_NAME
    base.mkdir(parents=True)
    (base / "1").symlink_to(exported, target_is_directory=True)
    config = tmp_path / "serving_models.config"
    entry = f'name: "{SERVABLE_NAME}" base_path: "{base}" model_platform: "tensorflow"'
    config.write_text(f"model_config_list {{ config {{ {entry} }} }}\n", encoding="utf-8")
    return config


def test_the_version_loads_and_replays_its_warmup_in_the_model_runtime(tmp_path: Path, exported: Path, queries):
    runtime = ModelRuntime(_serving_config(tmp_path, exported), poll=False)
    try:
        assert [s.state for s in runtime.status(SERVABLE_NAME)] == ["AVAILABLE"]
        version, out = runtime.predict(SERVABLE_NAME, {"target_latent": queries[:1], "k_num": np.array(10, np.int32)})
        assert version == 1 and out["indices"].shape == (1, 10)
    finally:
        runtime.close()


def test_both_backends_honour_the_probes_default(tmp_path: Path, exported: Path, make_backend, servable, queries):
    backend = make_backend(_serving_config(tmp_path, exported), poll_interval=0)
    ref = ModelRef(SERVABLE_NAME)
    request = {"target_latent": queries[:4], "k_num": np.array(10, np.int32)}
    default = backend.predict(ref, request)
    np.testing.assert_array_equal(default["indices"], servable.search(queries[:4], 10)["indices"])
    one = backend.predict(ref, {**request, "probes": np.array(1, np.int32)})
    np.testing.assert_array_equal(
        one["indices"], servable.search(queries[:4], 10, probes=np.array(1, np.int32))["indices"]
    )


def test_a_training_is_kept_and_reused_for_a_gallery_with_faces_added(tmp_path: Path, gallery, training) -> None:
    again = ivf.IvfTraining.from_bytes(training.to_bytes())
    for field in ("mean", "rotation", "centroids", "group_centroids", "group_starts"):
        np.testing.assert_array_equal(getattr(again, field), getattr(training, field))
    assert (again.lists, again.scan_dims, again.gallery_faces) == (LISTS, training.scan_dims, N)
    added = clustered_faces(50, D, 5, seed=77)
    bigger = np.concatenate([gallery, added])
    version = ivf.export_ivf_search_model(tmp_path / "2", bigger, filenames_for(len(bigger)), again)
    loaded = LoadedSearch(version)
    try:
        out = loaded.search(added, 1)
    finally:
        loaded.close()
    np.testing.assert_array_equal(out["indices"][:, 0], np.arange(N, N + 50))
    assert ivf.training_advice(again, bigger) is None


@pytest.mark.parametrize("data", [b"", b"not an npz", b"PK\x03\x04 truncated"])
def test_a_broken_training_file_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not an IVF training file"):
        ivf.IvfTraining.from_bytes(data)


def test_training_advice_names_why_the_lists_need_training_again(gallery, training) -> None:
    assert ivf.training_advice(training, gallery) is None
    grown = np.tile(gallery, (5, 1))
    assert "has grown from 4,000 to 20,000 faces" in ivf.training_advice(training, grown)
    # Most faces now crowd into one list.
    crowd = np.tile(gallery[:1], (3 * N, 1)) + 1e-4 * np.random.default_rng(0).standard_normal((3 * N, D))
    uneven = np.concatenate([gallery, crowd.astype(np.float32)])
    assert "unevenly" in ivf.training_advice(training, uneven)
    # Other descriptors: the same faces, spread three times wider.
    assert "farther from their lists' centroids" in ivf.training_advice(training, 3 * gallery)
    assert ivf.training_advice(training, np.zeros((10, 8), np.float32)) == (
        "the faces have 8 values each but the lists were trained on faces of 16: train them again"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lists": N + 1}, "lists must be between 1 and the number of faces"),
        ({"scan_dims": D + 1}, "scan_dims must be between 1 and the latent size"),
        ({"lists": 64, "sample": 32}, "cannot train 64 lists"),
    ],
)
def test_impossible_training_is_refused(gallery, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ivf.train_ivf(gallery, **options)


def test_training_refuses_nan(gallery) -> None:
    bad = gallery.copy()
    bad[7, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        ivf.train_ivf(bad, lists=8)


# -- what the graph is made of -------------------------------------------------------------------------

# Host-side by nature, as in the exact search: the request checks and the file names (strings).
HOST_OPS = {"Assert", "StringFormat", "StringJoin", "AsString", "ReduceJoin", "Equal", "NoOp", "Identity"}
PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _graph_ops(version: Path) -> list[tf.compat.v1.NodeDef]:
    saved_model = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes())
    graph_def = saved_model.meta_graphs[0].graph_def
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        if "search" in function.signature.name:
            nodes += list(function.node_def)
    return nodes


def _has_device_kernel(node: tf.compat.v1.NodeDef) -> bool:
    """A GPU (or any-device) kernel whose type constraints this node's attributes meet."""
    for kernel in kernels.get_registered_kernels_for_op(node.op).kernel:
        if kernel.device_type not in ("GPU", "DEFAULT"):
            continue
        if all(
            node.attr[c.name].type in c.allowed_values.list.type
            for c in kernel.constraint
            if c.name in node.attr and c.allowed_values.list.type
        ):
            return True
    return False


def test_the_search_uses_stock_ops_with_gpu_kernels_in_its_hot_path(exported: Path) -> None:
    if not any(k.device_type == "GPU" for k in kernels.get_registered_kernels_for_op("MatMul").kernel):
        pytest.skip("this TensorFlow build has no GPU kernels registered to check against")
    nodes = _graph_ops(exported)
    types = {node.op for node in nodes}
    assert not types & PYTHON_OPS and "RaggedRange" not in types
    string = tf.string.as_datatype_enum
    missing = sorted(
        {
            node.op
            for node in nodes
            if node.op not in HOST_OPS
            and not any(attr.type == string for attr in node.attr.values())
            and not node.op.startswith(("Placeholder", "Const", "VarHandle", "StatefulPartitionedCall"))
            and not _has_device_kernel(node)
        }
    )
    assert not missing, f"ops without a GPU kernel for their types: {missing}"
