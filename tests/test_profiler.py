"""The latency profiler on the tiny random pair, on a CPU."""
import pytest

pytestmark = pytest.mark.live
torch = pytest.importorskip("torch")

from specreplay.live.profiler import (KINDS, QUICK_GRID, Grid, Point, Profiler,  # noqa: E402
                                      host_policies, plan_points, tree_layout, tree_mask)
from specreplay.models.draft import crop_cache  # noqa: E402
from specreplay.models.loading import build_tiny_pair, cache_kwargs  # noqa: E402
from specreplay.cli import main  # noqa: E402
from specreplay.traces.reader import Profile  # noqa: E402
from specreplay.traces.writer import write_profile  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    return build_tiny_pair()


def test_quick_profile_is_readable_and_complete(pair, tmp_path):
    target, draft = pair
    prof = Profiler(target, draft, QUICK_GRID, "cpu")
    assert prof.skipped == []
    run = prof.run()
    write_profile(tmp_path, run.rows, {"setup": {"device": "cpu"}, "target": {"id": "t"},
                                       "draft": {"id": "d"}})
    table = Profile.open(tmp_path).table.to_pylist()
    assert {r["kind"] for r in table} == set(KINDS)
    g = QUICK_GRID
    # every (kind, size) of the grid at every context length and batch, once
    expected = {(k, q, L, B) for L in g.context for B in g.batch
                for k, qs in (("target", g.q), ("tree_verify", g.q), ("draft", g.block_sizes)) for q in qs}
    forward = [r for r in table if r["kind"] != "overhead"]
    assert {(r["kind"], r["q"], r["context_len"], r["batch"]) for r in forward} == expected
    assert len(forward) == len(expected)
    for r in forward:
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"] and r["n"] == g.repeats
    # the host part of the loop's own cycles: every host mode at every context length,
    # q = the cycle's verify tokens (ar 1, the chain its block, a tree 1 + its nodes: the
    # binary trie of depth 2 plus the top-1 chain continued to offset 3, and the full
    # ternary trie of depth 3)
    host = [r for r in table if r["kind"] == "overhead"]
    assert {(r["mode"], r["context_len"]) for r in host} == \
        {(m, L) for m in ("ar", "chain", "gated", "tree", "batch", "probed") for L in g.context}
    qs = {m: {r["q"] for r in host if r["mode"] == m} for m in ("ar", "chain", "tree")}
    assert qs == {"ar": {1}, "chain": {4}, "tree": {1 + 6 + 1, 1 + 39}}
    assert all(r["batch"] == 1 and 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"] for r in host)
    per_decode = g.host_cycles * min(g.repeats, 3)
    assert sum(r["n"] for r in host if r["mode"] == "chain") == per_decode * len(g.context)
    chain = {(r["q"], r["context_len"], r["batch"]) for r in table if r["kind"] == "target"}
    tree = {(r["q"], r["context_len"], r["batch"]) for r in table if r["kind"] == "tree_verify"}
    assert chain == tree


def test_points_past_the_position_limit_are_skipped():
    grid = Grid(q=(1, 4, 8), context=(16, 4090), batch=(1, 2), block_sizes=(4, 8), repeats=1, warmup=0)
    keep, skipped = plan_points(grid, target_max=4096, draft_max=4096)
    # at 4090 a verify of q tokens reaches position 4090 + q - 1: q = 8 does not fit in 4096;
    # a draft block of b reaches 4090 + b - 1
    assert {(p.kind, p.q, p.context_len) for p in skipped} == {
        ("target", 8, 4090), ("tree_verify", 8, 4090), ("draft", 8, 4090)}
    assert len(skipped) == 3 * 2 and len(keep) + len(skipped) == 2 * 2 * (3 + 3 + 2)
    assert Point("target", 4, 4090, 2) in keep
    assert plan_points(grid, None, None)[1] == []


def test_tree_mask_is_ancestor_only_and_matches_path_verify(pair):
    target, _ = pair
    parents, depths = tree_layout(7)
    assert parents == [-1, 0, 0, 1, 1, 2, 2] and depths == [0, 1, 1, 2, 2, 2, 2]
    L = 5
    mask = tree_mask(parents, L, 2, "cpu")
    assert mask.shape == (2, 1, 7, L + 7)
    assert mask[1, 0, 4].tolist() == [True] * L + [True, True, False, False, True, False, False]
    # The timed tree forward is a real verify: node logits equal each root-to-node path
    # verified alone as a causal chain.
    from transformers import DynamicCache
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 90, (1, L), generator=g)
    nodes = torch.randint(0, 90, (1, 7), generator=g)
    with torch.inference_mode():
        cache = DynamicCache(config=target.config)
        target(input_ids=prompt, **cache_kwargs(target, cache), use_cache=True)
        tree = target(input_ids=nodes, position_ids=L + torch.tensor([depths]), **cache_kwargs(target, cache),
                      use_cache=True, attention_mask=tree_mask(parents, L, 1, "cpu")).logits[0]
        for node in range(7):
            path = [node]
            while parents[path[-1]] >= 0:
                path.append(parents[path[-1]])
            crop_cache(cache, L)
            chain = target(input_ids=nodes[:, path[::-1]], **cache_kwargs(target, cache), use_cache=True).logits[0]
            assert torch.allclose(chain[-1], tree[node], atol=1e-5)


def test_host_policies_cover_every_host_mode():
    from specreplay.policies import parse_policy
    specs = host_policies((4, 8, 16))
    assert specs[:4] == ["ar", "fixed(b=4)", "fixed(b=8)", "fixed(b=16)"]
    kinds = set()
    for spec in specs:
        p = parse_policy(spec)
        kinds.add("ar" if p.block.name == "ar" else p.verify.name if p.verify
                  else "probed" if any(c.probes() for c in p.inputs) else "chain")
    assert kinds == {"ar", "chain", "gate", "probed", "tree", "candidates"}
    assert host_policies((2,)) == ["ar", "fixed(b=2)", "fixed(b=2)+gate(min_prob=0.2)", "fixed(b=2)+refine(steps=2)",
                                   "fixed(b=2)+candidates(mode=fixed_prefix_rank, prefix=1, verify=batch)"]


def test_cli_quick_profile_and_bad_input(pair, tmp_path, capsys):
    target, draft = pair
    target.save_pretrained(tmp_path / "t")
    draft.save_pretrained(tmp_path / "d")
    out = tmp_path / "prof"
    args = ["profile", "--target", str(tmp_path / "t"), "--draft", str(tmp_path / "d"),
            "--out", str(out), "--quick", "--device", "cpu"]
    assert main(args + ["--context", "16,5000", "--batch", "1"]) == 0
    text = capsys.readouterr().out
    assert "skipped 5 points past the position limit (target 4096, draft 4096)" in text
    assert "host part of a live cycle (median ms): " in text
    prof = Profile.open(out)
    assert {r["context_len"] for r in prof.table.to_pylist()} == {16}
    assert prof.meta["setup"]["device"] == "cpu" and prof.meta["setup"]["backend"] == "hf"
    assert set(prof.meta["target"]["files"]) >= {"config.json", "model.safetensors"}
    assert prof.meta["draft"]["mask_token_id"] == draft.config.mask_token_id
    assert main(args + ["--q", "1,x"]) == 2
    assert "--q takes comma-separated integers" in capsys.readouterr().err
    assert main(args + ["--block-sizes", "1,4"]) == 2
    assert "--block-sizes values must be integers of at least 2" in capsys.readouterr().err
    assert main(args + ["--context", "5000"]) == 2
    assert "every point of the grid runs past the position limit" in capsys.readouterr().err
    bad = ["profile", "--target", str(tmp_path / "missing"), "--draft", str(tmp_path / "d"),
           "--out", str(out), "--quick", "--device", "cpu"]
    assert main(bad) == 2
    assert "no target model folder at" in capsys.readouterr().err
