"""The cost model at a captured backend's padded shapes: a pass costs what its padded
shape costs (query bucket, cache span), flat between steps, instead of a line drawn
across a step; the shapes come from the profile's setup."""
import numpy as np
import pyarrow as pa
import pytest

from specreplay.sim.cost import FITTED, CostModel, shapes_of
from specreplay.traces.schema import KV_QUANTUM, QUERY_BUCKETS, kv_rows, padded_query

GRID_Q = (1, 2, 4, 8, 16, 32, 64)
GRID_L = (44, 88, 176, 352, 380)
BLOCKS = (4, 8, 16)


def step_cost(kind: str, q: int, L: int, quantum: int = KV_QUANTUM) -> float:
    """SYNTHETIC: a captured engine's time, a function of the padded shape only."""
    if kind == "draft":
        return 1e-3 * (1.5 + 0.001 * q + 0.1 * kv_rows(L, quantum) / quantum)
    qp = padded_query(q)
    span = kv_rows(L + qp, quantum)
    return 1e-3 * (5.0 + 0.01 * qp + 0.5 * span / quantum) * (1.05 if kind == "tree_verify" else 1.0)


def profile(quantum: int = KV_QUANTUM) -> pa.Table:
    rows = [(k, q, L) for k in ("target", "tree_verify") for q in GRID_Q for L in GRID_L]
    rows += [("draft", b, L) for b in BLOCKS for L in GRID_L]
    return pa.table({"kind": [k for k, _, _ in rows], "q": [q for _, q, _ in rows],
                     "context_len": [L for _, _, L in rows], "batch": [1] * len(rows),
                     "median_s": [step_cost(k, q, L, quantum) for k, q, L in rows]})


GRAPH = {"setup": {"backend": "graph", "device": "cuda"}}


@pytest.mark.parametrize("kind, q, L", [
    ("target", 12, 200),       # bucket 16, span 256: between two measured q and L
    ("target", 42, 150),       # bucket 64 (a tree's node count), span 256
    ("target", 16, 245),       # L + 16 crosses 256: the 512-row span
    ("target", 64, 200),       # L + 64 crosses 256 sooner than a chain does
    ("tree_verify", 52, 100),
    ("tree_verify", 42, 300),
    ("draft", 16, 300),        # the draft's span is its context's
    ("draft", 8, 256),
    ("target", 3, 500),        # past the grid's last context, in its last span
])
def test_a_padded_pass_costs_its_padded_shape(kind, q, L):
    m = CostModel(profile(), setup=GRAPH)
    t, src = m.seconds(kind, q, L)
    assert src != FITTED
    assert t == pytest.approx(step_cost(kind, q, L), rel=1e-9)


def test_without_padded_shapes_the_model_interpolates_as_before():
    # an hf or CPU profile: the same rows, linear between the measured points, which a
    # step function does not follow (this is what the shapes correct)
    m = CostModel(profile(), setup={"setup": {"backend": "hf", "device": "cuda"}})
    t, src = m.seconds("target", 42, 150)
    lo, hi = step_cost("target", 32, 150), step_cost("target", 64, 150)
    assert src != FITTED
    assert t == pytest.approx(lo + (hi - lo) * (42 - 32) / (64 - 32), rel=1e-9)
    assert t != pytest.approx(step_cost("target", 42, 150), rel=1e-3)


def test_a_span_no_profile_point_shares_is_extrapolated_and_flagged():
    m = CostModel(profile(), setup=GRAPH)
    _, src = m.seconds("target", 16, 700)  # span 768: no grid context reaches it
    assert src == FITTED


def test_the_setup_names_the_shapes_and_they_are_followed():
    given = {"setup": {"backend": "graph", "device": "cuda",
                       "shapes": {"query_buckets": list(QUERY_BUCKETS), "kv_quantum": 128}}}
    m = CostModel(profile(quantum=128), setup=given)
    for q, L in ((12, 100), (16, 120), (42, 340)):
        t, _ = m.seconds("target", q, L)
        assert t == pytest.approx(step_cost("target", q, L, 128), rel=1e-9)
    assert shapes_of({"setup": {"backend": "graph", "device": "cpu"}}) is None
    assert shapes_of(GRAPH).kv_quantum == KV_QUANTUM


@pytest.mark.parametrize("bad", [{"query_buckets": [], "kv_quantum": 256},
                                 {"query_buckets": [4, 2], "kv_quantum": 256},
                                 {"query_buckets": [1, 2], "kv_quantum": 0},
                                 {"kv_quantum": 256}, "256"])
def test_malformed_shapes_are_refused_in_one_sentence(bad):
    with pytest.raises(ValueError, match="re-run specreplay profile"):
        CostModel(profile(), setup={"setup": {"backend": "graph", "device": "cuda", "shapes": bad}})


def test_the_engine_and_the_cost_model_share_one_padding_rule():
    pytest.importorskip("torch")
    from specreplay.live.backend import BUCKETS, bucket, graph_shapes, kv_span
    assert tuple(BUCKETS) == QUERY_BUCKETS
    assert graph_shapes(True) == {"query_buckets": list(QUERY_BUCKETS), "kv_quantum": KV_QUANTUM}
    assert graph_shapes(False) is None
    for n in (1, 3, 16, 17, 64, 65, 130):
        assert bucket(n) == padded_query(n)
    assert [kv_span(r, 1024) for r in (1, 256, 257, 2000)] == [256, 256, 512, 1024]
    assert np.all(np.diff([padded_query(n) for n in range(1, 200)]) >= 0)


def test_a_point_the_profile_skipped_is_not_snapped_to():
    """A profile without q = 64 at L = 380 (past a position limit, say): a 64-row pass at
    L = 300 reads the measurement at L = 352, of the same span, not the fitted line."""
    table = profile()
    keep = [not (k == "target" and q == 64 and L == 380) for k, q, L in
            zip(table["kind"].to_pylist(), table["q"].to_pylist(), table["context_len"].to_pylist())]
    m = CostModel(table.filter(pa.array(keep)), setup=GRAPH)
    for q, L in ((64, 300), (42, 300), (64, 379)):  # 379: nearest the skipped 380
        t, src = m.seconds("target", q, L)
        assert src != FITTED
        assert t == pytest.approx(step_cost("target", q, L), rel=1e-9)
    # and without shapes a measured grid point next to the skipped one stays a measurement
    m = CostModel(table.filter(pa.array(keep)), setup={"setup": {"backend": "hf"}})
    t, src = m.seconds("target", 64, 352)
    assert src != FITTED and t == pytest.approx(step_cost("target", 64, 352), rel=1e-9)


def test_a_graph_setup_from_before_shapes_pairs_with_one_that_names_them():
    """Profiles and traces of the graph backend on a GPU written before setups carried
    ``shapes`` ran at the same padding: comparing setups must not refuse the pair (nor a
    resumed recording), while other shapes are still a different setup."""
    from specreplay.traces.identity import differences, recording_identity, setup_identity
    old = {"setup": {"backend": "graph", "device": "cuda", "gpu": "H200"}}
    new = {"setup": {**old["setup"], "shapes": {"query_buckets": list(QUERY_BUCKETS), "kv_quantum": KV_QUANTUM}}}
    other = {"setup": {**old["setup"], "shapes": {"query_buckets": [1, 8], "kv_quantum": 128}}}
    assert differences(setup_identity(old), setup_identity(new)) == []
    assert differences(recording_identity(old), recording_identity(new)) == []
    assert differences(setup_identity(old), setup_identity(other))
    hf = {"setup": {"backend": "hf", "device": "cuda"}}
    assert "shapes" not in setup_identity(hf)["setup"]
