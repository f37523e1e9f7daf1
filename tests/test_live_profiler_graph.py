"""The graph backend's profile: measured through the loop's own backend calls,
interleaved over the whole grid, with the monotonicity check reported (not fitted) and
the context grid taken from the recorded prompts."""
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.profiler import (GraphProfiler, Grid, context_grid, monotonicity,  # noqa: E402
                                      tree_paths)
from specreplay.live.verify import pack  # noqa: E402
from specreplay.policies import trie_nodes  # noqa: E402
from live_pair import tiny_pair  # noqa: E402


def _row(kind, q, L, med, spread=0.0):
    return {"kind": kind, "q": q, "context_len": L, "batch": 1, "median_s": med,
            "p10_s": med - spread / 2, "p90_s": med + spread / 2, "n": 5}


def test_monotonicity_reports_a_step_down_beyond_noise():
    rows = [_row("target", 1, 256, 1.0), _row("target", 4, 256, 1.1), _row("target", 8, 256, 0.5),
            _row("target", 1, 512, 1.2), _row("target", 4, 512, 1.3), _row("target", 8, 512, 1.4)]
    got = monotonicity(rows)
    assert [(v["axis"], v["at"], v["from"], v["to"]) for v in got["violations"]] == [("q", 256, 4, 8)]
    assert got["checked"] == 7  # 2 q-steps at each of 2 contexts + 1 context step at each of 3 q
    # within the points' own spread it is noise, not a violation
    rows[2] = _row("target", 8, 256, 0.9, spread=0.4)
    assert monotonicity(rows)["violations"] == []


def test_context_grid_starts_at_the_shortest_prompt_and_covers_the_longest_context():
    assert context_grid(37, 300) == (37, 74, 148, 296, 592)
    assert context_grid(512, 512) == (512,)


@pytest.mark.parametrize("nodes", [1, 3, 7, 15, 10])
def test_tree_paths_pack_into_q_rows(nodes):
    paths = tree_paths(nodes)
    assert len(trie_nodes(paths)) == nodes
    assert len(pack("tree", paths, 0, [0] * nodes).tokens) == nodes + 1


def test_graph_profile_times_every_point_and_each_verify_modes_host_step():
    target, draft = tiny_pair()
    grid = Grid(q=(1, 4), context=(8, 24), batch=(1, 2), block_sizes=(4,), repeats=3, warmup=1)
    prof = GraphProfiler(target, draft, grid, torch.device("cpu"))
    assert {p.batch for p in prof.points} == {1}  # batch plans are packed rows here
    run = prof.run()
    forward = [r for r in run.rows if r["kind"] != "overhead"]
    assert len(forward) == len(prof.points) == 2 * 2 * 2 + 2
    assert all(r["n"] == 3 and r["median_s"] > 0 for r in forward)
    meta = prof.meta(run.rows)
    assert set(meta["host_s"]) == {"ar", "chain", "gated", "tree", "batch", "probed"}
    assert all(v > 0 for v in meta["host_s"].values())
    assert "violations" in meta["checks"]["monotone"]
    # the host rows came from real decodes through this very backend


def test_host_decodes_read_windows_of_the_recorded_text(monkeypatch):
    """With recorded text, every host-time decode's prompt is a window of it (of the grid
    context's length, wrapping around); without, random ids."""
    import numpy as np

    from specreplay.live import profiler
    from specreplay.live.loop import Decoder
    target, draft = tiny_pair()
    vocab = target.get_input_embeddings().num_embeddings
    text = [(7 * i + 3) % vocab for i in range(min(50, vocab))]
    assert len(set(text)) == len(text)
    rng = np.random.default_rng(0)
    for L in (7, 50, 120):
        got = profiler._host_prompt(text, L, 1000, rng)
        start = text.index(got[0])
        assert got == [text[(start + i) % len(text)] for i in range(L)]
    assert len(profiler._host_prompt(None, 9, 1000, rng)) == 9
    seen = []
    real = Decoder.begin

    def begin(self, sample, prompt_ids):
        seen.append(list(prompt_ids))
        return real(self, sample, prompt_ids)
    monkeypatch.setattr(Decoder, "begin", begin)
    grid = Grid(q=(1,), context=(8, 20), batch=(1,), block_sizes=(4,), repeats=1, warmup=0, host_cycles=2)
    rows = profiler.measure_host(target, draft, "graph", grid, 0, text=text)
    assert rows and seen and {len(p) for p in seen} == {8, 20}
    for p in seen:
        start = text.index(p[0])
        assert p == [text[(start + i) % len(text)] for i in range(len(p))]


def test_recorded_text_is_the_samples_prompts_and_outputs(tmp_path):
    """SYNTHETIC trace (unit test only): the text is every sample's prompt then output."""
    from specreplay.live.profiler import recorded_text
    from specreplay.traces.reader import Trace
    from specreplay.traces.synthetic import make_trace
    assert recorded_text(tmp_path / "none") is None
    make_trace(tmp_path / "t", output_lengths=(12, 9, 20))
    samples = Trace.open(tmp_path / "t").samples.to_pylist()
    want = [t for s in samples for t in s["prompt_ids"] + s["output_ids"]]
    assert want and recorded_text(tmp_path / "t") == want
