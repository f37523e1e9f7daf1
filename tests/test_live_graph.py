"""The graph backend on CPU float32 (eager, the same model code a GPU replays from CUDA
graphs): greedy output equals plain AR for every policy and action the hf backend's
equality test covers; its logits and features equal the hf backend's on the fixture
pair; the static caches hold exactly the committed tokens; a cycle's seconds add up."""
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.backend import GraphBackend, HFBackend, backend_for, bucket, resolve_backend  # noqa: E402
from specreplay.live.loop import Decoder, LoopConfig, cache_length  # noqa: E402
from specreplay.models.loading import cache_kwargs  # noqa: E402
from specreplay.policies import parse_policy, trie_nodes  # noqa: E402
from live_pair import PROMPTS, hf_greedy, tiny_pair  # noqa: E402
from test_live_loop import MAX_NEW, SPECS  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "models" / "fixtures"


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def reference(pair):
    target, _ = pair
    stop = hf_greedy(target, PROMPTS[1], MAX_NEW)[20]
    return stop, [hf_greedy(target, p, MAX_NEW) for p in PROMPTS], hf_greedy(target, PROMPTS[1], MAX_NEW, stop)


@pytest.mark.parametrize("spec", SPECS)
def test_graph_backend_greedy_equals_plain_ar(pair, reference, spec):
    target, draft = pair
    stop, refs, stopped = reference
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    assert isinstance(dec.backend, GraphBackend) and not dec.backend.capture
    for i, (prompt, ref) in enumerate(zip(PROMPTS, refs)):
        res = dec.run(i, prompt)
        assert res.output_ids == ref, spec
        for c in res.cycles:  # the three phases add up to the cycle
            assert c["draft_s"] + c["target_s"] + c["overhead_s"] == pytest.approx(c["cycle_s"], rel=1e-9, abs=1e-12)
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW, stop_token_ids=(stop,)),
                  backend="graph")
    res = dec.run(1, PROMPTS[1])
    assert res.output_ids == stopped and res.stop_reason == "eos"


@pytest.mark.parametrize("spec", ["fixed(b=6)", "fixed(b=6)+tree(topk=3, depth=3)",
                                  "candidates(mode=branch_beam, depth=3, topk=3, verify=batch)",
                                  "refine(steps=2)", "fixed(b=6)+recycle(mode=dense)"])
def test_static_caches_hold_the_committed_tokens(pair, spec):
    """After every cycle the target cache's K/V rows equal a fresh hf prefill of prompt +
    committed tokens (so tree paths and batch rows were moved into place), and the draft
    cache holds the context it saw."""
    from transformers import DynamicCache
    target, draft = pair
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    state = dec.begin(0, PROMPTS[0])
    P = len(PROMPTS[0])
    assert cache_length(state.target_cache) == P
    moved = False
    while True:
        context_len = state.context_len
        more = dec.step(state)
        moved |= state.cycles[-1]["chosen_path"] > 0 and state.cycles[-1]["accepted"] > 0
        n = P + state.start
        assert cache_length(state.target_cache) == n
        assert cache_length(state.draft_cache) == context_len
        ids = torch.tensor([state.prompt_ids + state.output[:-1]])
        ref = DynamicCache(config=target.config)
        with torch.inference_mode():
            target(input_ids=ids, **cache_kwargs(target, ref), use_cache=True)
        for i, layer in enumerate(ref.layers):
            torch.testing.assert_close(state.target_cache.k[i][:, :, :n], layer.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(state.target_cache.v[i][:, :, :n], layer.values, atol=1e-5, rtol=1e-5)
        if not more:
            break
    if "tree" in spec or "batch" in spec:
        assert moved, "the test should commit off the first path at least once"


def test_one_request_at_a_time(pair):
    target, draft = pair
    dec = Decoder(target, draft, parse_policy("fixed(b=4)"), LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    first = dec.begin(0, PROMPTS[0])
    dec.begin(1, PROMPTS[1])
    with pytest.raises(RuntimeError, match="one request at a time"):
        dec.step(first)


def test_decoders_of_a_pair_share_one_graph_backend(pair):
    target, draft = pair
    assert backend_for("graph", target, draft) is backend_for("graph", target, draft)
    assert resolve_backend(None, target, draft) == "hf"  # CPU: hf unless asked
    assert isinstance(backend_for(None, target, draft), HFBackend)


def test_an_unsupported_target_names_the_hf_backend():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    with pytest.raises(ValueError, match="--backend hf"):
        resolve_backend("graph", model)
    assert resolve_backend(None, model) == "hf"


def test_buckets_pad_up():
    assert [bucket(n) for n in (1, 2, 3, 5, 16, 17, 64, 65, 130)] == [1, 2, 4, 8, 16, 32, 64, 128, 192]


def _close_to_scale(got, want, tol=1e-5):
    """Every logit within ``tol`` of the row's largest |logit|: the draft's fused kernels
    reduce in another order than its modules, which moves float32 logits of magnitude
    ~10 by about 1e-5 absolute, a relative error of 1e-6; a wrong weight or mask moves
    them by orders of magnitude more."""
    scale = want.abs().amax(dim=-1, keepdim=True)
    err = ((got - want).abs() / scale).max().item()
    assert err <= tol, f"max |diff| / max |logit| = {err:.2e} > {tol:g}"
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def _fixture_pair():
    from specreplay.models.loading import load_draft, load_target
    if not (FIXTURES / "draft" / "config.json").exists():
        pytest.skip("the fixture draft is not shipped")
    target = load_target(str(FIXTURES / "target"), dtype="float32", device="cpu")
    return target, load_draft(str(FIXTURES / "draft"), target)


def test_graph_logits_equal_hf_on_the_fixture_pair():
    """Prefill, chain, tree and batch verify, commit and draft passes through both
    backends on the shipped pair: logits and features agree to 1e-5."""
    target, draft = _fixture_pair()
    hf, graph = HFBackend(target, draft), GraphBackend(target, draft, capture=False)
    prompt = [int(t) for t in torch.randint(0, 1000, (40,), generator=torch.Generator().manual_seed(3))]
    paths_by_mode = {"chain": ((0, 0, 0, 0, 0),), "tree": ((0, 0, 0), (1,), (0, 1), (2, 0, 1)),
                     "batch": ((0, 0, 0), (1, 0), (0, 1))}
    with torch.inference_mode():
        for mode, paths in paths_by_mode.items():
            caches = {}
            for name, be in (("hf", hf), ("graph", graph)):
                tc, dc = be.start(len(prompt), 64)
                logits, feats = be.prefill(tc, prompt, True)
                caches[name] = (be, tc, dc, logits, feats)
            (hb, htc, hdc, hl, hfeat), (gb, gtc, gdc, gl, gfeat) = caches["hf"], caches["graph"]
            torch.testing.assert_close(gl, hl, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(gfeat, hfeat, atol=1e-5, rtol=1e-5)
            nodes = trie_nodes(paths)
            tokens = [(37 * d + 11 * r + 5) % 1000 for _, d, r in nodes]
            L = len(prompt)
            hv = hb.verify(htc, mode, paths, 17, tokens, L, True)
            gv = gb.verify(gtc, mode, paths, 17, tokens, L, True)
            torch.testing.assert_close(gv.node_logits, hv.node_logits, atol=1e-5, rtol=1e-5)
            if mode == "batch":
                for i, path in enumerate(paths):
                    n = len(path) + 1
                    torch.testing.assert_close(gv.rows[i, :n], hv.rows[i, :n], atol=1e-5, rtol=1e-5)
            hk = hb.commit(htc, hv, len(paths) - 1, 2, L)
            gk = gb.commit(gtc, gv, len(paths) - 1, 2, L)
            torch.testing.assert_close(gk, hk, atol=1e-4, rtol=1e-4)  # unnormalised feature sums
            # draft passes: prompt context then the kept rows, with a refinement-style pass
            ctx = torch.cat((hfeat, hk), dim=1)
            block = [17] + [draft.mask_token_id] * 7
            hd = hb.draft_pass(hdc, block, ctx, 0, L + 3)
            gd = gb.draft_pass(gdc, block, ctx, 0, L + 3)
            _close_to_scale(gd, hd)
            block[3] = 42
            _close_to_scale(gb.draft_pass(gdc, block, None, L + 3, L + 3),
                            hb.draft_pass(hdc, block, None, L + 3, L + 3))
            # the next verify over the committed cache agrees too
            hv = hb.verify(htc, "chain", ((0, 0),), 9, [4, 8], L + 3, True)
            gv = gb.verify(gtc, "chain", ((0, 0),), 9, [4, 8], L + 3, True)
            torch.testing.assert_close(gv.node_logits, hv.node_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["fixed(b=6)", "fixed(b=6)+refine(steps=2)", "fixed(b=6)+recycle(mode=dense)"])
def test_oracle_through_the_graph_backend_equals_the_live_draft(pair, spec):
    """Recording and oracle both on the graph backend: the oracle's rows reproduce every
    live cycle's proposal (the target pass of the oracle runs the same compact model)."""
    from specreplay.live.oracle import Oracle
    from test_live_oracle import _index, _same
    target, draft = pair
    policy = parse_policy(spec)
    dec = Decoder(target, draft, policy, LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    res = dec.run(0, PROMPTS[0])
    oracle = Oracle(target, draft, [6], 4, policy.probes(), MAX_NEW, backend=dec.backend)
    assert oracle.backend is dec.backend
    rows, _ = oracle.rows(0, res.prompt_ids, res.output_ids)
    idx = _index(rows)
    checked = 0
    for prev, cyc, view in zip([None] + res.cycles, res.cycles, res.views):
        if cyc["n_seeds"] and not _same(idx[(prev["start"], 6, "", 0)], res.views[res.cycles.index(prev)]):
            continue  # recycling is checked only where the previous cycle drafted plainly
        assert _same(idx[(cyc["start"], cyc["block_size"], cyc["probe"], cyc["prev_offset"])], view), cyc
        checked += 1
    assert checked >= 2


class _Replay:
    """StepGraph's contract without a GPU: the first call computes the outputs, and every
    ``run`` recomputes from the static inputs and writes into those same output tensors,
    as a CUDA graph replay does. Runs the graph backend's captured path (bucket padding,
    cache spans, in-place input rewrites, outputs reused across replays) on a CPU."""

    def __init__(self, fn, inputs, capture, pool=None):
        self.fn, self.inputs, self.capture_s = fn, inputs, 0.0
        self.outputs = fn(*inputs)

    def run(self):
        new = self.fn(*self.inputs)
        if self.outputs is not None:
            for buf, value in zip(self.outputs, new):
                buf.copy_(value)
        return self.outputs


@pytest.fixture
def replayed(pair, monkeypatch):
    import specreplay.models.fast as fast
    monkeypatch.setattr(fast, "StepGraph", _Replay)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    target, draft = pair
    return GraphBackend(target, draft, capture=True)


@pytest.mark.parametrize("spec", ["fixed(b=6)", "fixed(b=6)+tree(topk=3, depth=3)", "fixed(b=6)+refine(steps=2)",
                                  "candidates(mode=branch_beam, depth=3, topk=3, verify=batch)",
                                  "fixed(b=6)+recycle(mode=dense)", "ar"])
def test_replayed_path_equals_the_eager_path(pair, reference, replayed, spec):
    """Through the captured path (padded buckets, reused outputs) greedy output equals
    plain AR, and every recorded top-k (draft and target) equals the eager backend's: a
    refinement or recycling pass that replays the same graph must not overwrite the
    logits the loop still holds."""
    target, draft = pair
    _, refs, _ = reference
    eager = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    captured = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW), backend=replayed)
    for i, (prompt, ref) in enumerate(zip(PROMPTS, refs)):
        a, b = eager.run(i, prompt), captured.run(i, prompt)
        assert b.output_ids == ref == a.output_ids, spec
        ta, tb = a.cycle_logits.to_pydict(), b.cycle_logits.to_pydict()
        for col in ("draft_ids", "target_ids"):
            assert ta[col] == tb[col], (spec, col)
        for col in ("draft_logits", "target_logits"):
            for x, y in zip(ta[col], tb[col]):
                assert (x is None) == (y is None)
                if x is not None:
                    assert max(abs(u - v) for u, v in zip(x, y)) <= 1e-4, (spec, col)
    assert replayed.graphs, "the captured path was not taken"


def test_the_profiler_runs_the_replayed_calls(pair, replayed):
    """The graph profile times the very calls the loop replays: after it, the backend
    holds a graph per verify bucket and cache span and per draft block size."""
    from specreplay.live.profiler import GraphProfiler, Grid
    target, draft = pair
    grid = Grid(q=(1, 3, 4), context=(8, 300), batch=(1,), block_sizes=(4,), repeats=2, warmup=1)
    prof = GraphProfiler(target, draft, grid, torch.device("cpu"), backend=replayed)
    run = prof.run()
    assert len([r for r in run.rows if r["kind"] != "overhead"]) == len(prof.points)
    assert {r["mode"] for r in run.rows if r["kind"] == "overhead"} == {"ar", "chain", "gated", "tree", "batch", "probed"}
    keys = set(replayed.graphs)
    assert {("verify", q, span) for q in (1, 4) for span in (256, 512)} <= {k[:3] for k in keys}
    assert {("block", 4, span) for span in (256, 512)} <= {k[:3] for k in keys}


@pytest.mark.parametrize("spec", ["fixed(b=6)", "fixed(b=6)+tree(topk=3, depth=3)",
                                  "candidates(mode=branch_beam, depth=3, topk=3, verify=batch)",
                                  "fixed(b=6)+refine(steps=2)"])
def test_the_small_query_attention_route_keeps_greedy_equal_to_ar(pair, reference, spec, monkeypatch):
    """The batched-matmul attention a GPU takes for verify and draft steps, forced on
    here: greedy output still equals plain AR (it is exercised, not bypassed)."""
    import specreplay.models.fast as fast
    calls = []
    real = fast.small_attention

    def counted(*a):
        calls.append(a[0].shape)
        return real(*a)
    monkeypatch.setattr(fast, "small_route", lambda rows, q: rows <= fast.SMALL_ATTENTION_ROWS)
    monkeypatch.setattr(fast, "small_attention", counted)
    target, draft = pair
    _, refs, _ = reference
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    for i, (prompt, ref) in enumerate(zip(PROMPTS, refs)):
        assert dec.run(i, prompt).output_ids == ref, spec
    assert calls


def test_the_few_row_kernel_route_gets_each_kv_heads_rows_and_keys(pair, reference, monkeypatch):
    """Where the stages carry a few-row attention (models/kernels.py's, on a GPU), the
    target and the draft hand it every layer's query rows, keys, values and bias in a
    layout the kernel reads (``few_rows_layout``, checked on every call): with the
    matmuls standing in for the kernel, forced on here, greedy output still equals
    plain AR, and both models take the route."""
    import dataclasses

    import specreplay.models.fast as fast
    from specreplay.live.backend import backend_for
    from specreplay.models.kernels import few_rows_layout
    target, draft = pair
    _, refs, _ = reference
    calls = {"target": [], "draft": []}
    who = []

    def few_rows(q, k, v, bias, scale):
        assert few_rows_layout(q, k, v, bias), (q.shape, q.stride(), k.shape, k.stride(), bias.shape)
        calls[who[-1]].append(k.shape[0])
        return fast.small_attention(q, k, v, bias, scale)
    monkeypatch.setattr(fast, "small_route", lambda rows, q: rows <= fast.SMALL_ATTENTION_ROWS)
    monkeypatch.setattr(fast, "few_rows_fit", lambda q, k, v, bias: True)
    backend = backend_for("graph", target, draft, capture=False)
    for name, model, method in (("target", backend.fast, "_forward"), ("draft", backend.fdraft, "_block_logits")):
        monkeypatch.setattr(model, "stages", dataclasses.replace(model.stages, few_rows=few_rows))
        real = getattr(model, method)

        def tagged(*a, _real=real, _name=name, **kw):
            who.append(_name)
            try:
                return _real(*a, **kw)
            finally:
                who.pop()
        monkeypatch.setattr(model, method, tagged)
    dec = Decoder(target, draft, parse_policy("fixed(b=6)"), LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    assert dec.backend is backend
    for i, (prompt, ref) in enumerate(zip(PROMPTS, refs)):
        assert dec.run(i, prompt).output_ids == ref
    assert set(calls["target"]) == {target.config.num_key_value_heads}
    assert set(calls["draft"]) == {draft.config.num_key_value_heads}
    assert len(calls["target"]) >= len(target.model.layers) and len(calls["draft"]) >= len(draft.layers)


def test_small_attention_is_as_close_to_float64_as_sdpa():
    """Scores, bias and softmax of the batched-matmul route against a float64 reference,
    with a mask that hides keys: no further from it than SDPA's own float32 kernel."""
    import torch.nn.functional as F
    from specreplay.models.fast import attention_bias, small_attention
    g = torch.Generator().manual_seed(5)
    for rows, keys in ((4, 300), (64, 90)):
        q, k, v = (torch.randn(8, n, 64, generator=g) for n in (rows, keys, keys))
        visible = torch.rand(1, 1, rows, keys, generator=g) > 0.4
        visible[..., 0] = True
        visible[..., 1] = False
        bias = attention_bias(visible, 1, torch.float32)[0]
        scale = 64 ** -0.5
        ref = F.scaled_dot_product_attention(q.double()[None], k.double()[None], v.double()[None],
                                             attn_mask=bias.double()[None], scale=scale)[0]
        sdpa = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=bias[None], scale=scale)[0]
        small = small_attention(q, k, v, bias, scale)
        assert small.shape == ref.shape
        assert (small.double() - ref).abs().max() <= max(2 * (sdpa.double() - ref).abs().max(), 1e-6)
        # a key hidden from every row changes nothing: moving its value leaves the output
        v2 = v.clone()
        v2[:, 1] += 100.0
        torch.testing.assert_close(small_attention(q, k, v2, bias, scale), small, atol=0, rtol=0)


@pytest.mark.parametrize("spec, fetches", [("fixed(b=6)", False), ("ewma", False),
                                           ("fixed(b=6)+gate(min_prob=0.2)", True),
                                           ("fixed(b=6)+tree(topk=3, depth=3)", True)])
def test_a_top1_chain_leaves_the_proposal_on_the_device_until_the_verdict(pair, reference, spec, fetches,
                                                                          monkeypatch):
    """A fixed chain plans without reading the proposal: its tokens go to the verify on
    the device and come back with the target's argmax in one copy (no separate fetch),
    and the output still equals plain AR. A policy that reads the proposal fetches it."""
    from specreplay.live.drafting import DeviceDraftView
    fetched = []
    real = DeviceDraftView._fetch

    def counted(self):
        if self._host is None:
            fetched.append(self.start)
        return real(self)
    monkeypatch.setattr(DeviceDraftView, "_fetch", counted)
    target, draft = pair
    _, refs, _ = reference
    dec = Decoder(target, draft, parse_policy(spec), LoopConfig(max_new_tokens=MAX_NEW), backend="graph")
    res = dec.run(0, PROMPTS[0])
    assert res.output_ids == refs[0]
    assert all(isinstance(v, DeviceDraftView) and v.fetched for v in res.views if v.block_size > 1)
    assert bool(fetched) == fetches


def test_static_kv_moves_rows_of_every_layer_at_once_and_grows_keeping_them():
    """move_rows copies the chosen rows of every layer's K and V into place (one gather
    and one scatter over the one cache tensor) and leaves the others; grow keeps the rows
    and the per-layer views still alias the cache."""
    from specreplay.models.fast import StaticKV
    kv = StaticKV(3, 2, 10, 4, torch.float32, "cpu")
    kv.buf.copy_(torch.randn(kv.buf.shape, generator=torch.Generator().manual_seed(1)))
    before = kv.buf.clone()
    kv.move_rows(torch.tensor([6, 8]), 4)
    for i in range(3):
        for layer, old in ((kv.k[i], before[i, 0]), (kv.v[i], before[i, 1])):
            torch.testing.assert_close(layer[0, :, 4:6], old[:, [6, 8]], atol=0, rtol=0)
            keep = [r for r in range(10) if r not in (4, 5)]
            torch.testing.assert_close(layer[0, :, keep], old[:, keep], atol=0, rtol=0)
    moved = kv.buf.clone()
    kv.grow(16)
    assert kv.capacity == 16 and kv.k[0].shape == (1, 2, 16, 4)
    torch.testing.assert_close(kv.buf[:, :, :, :10], moved, atol=0, rtol=0)
    kv.k[2][0, 1, 12] = 7.0
    assert kv.buf[2, 0, 1, 12, 0] == 7.0


def test_the_verify_span_starts_where_the_pass_is_launched(pair, monkeypatch):
    """The backend calls ``mark`` once per verify, after building and uploading the
    inputs and right before the forward (both backends); every live cycle then has a
    verify span."""
    target, draft = pair
    be = GraphBackend(target, draft, capture=False)
    order = []
    real = be.fast.forward

    def forward(*a, **k):
        order.append("forward")
        return real(*a, **k)
    monkeypatch.setattr(be.fast, "forward", forward)
    real_inputs = be._verify_inputs

    def inputs(*a, **k):
        order.append("inputs")
        return real_inputs(*a, **k)
    monkeypatch.setattr(be, "_verify_inputs", inputs)
    prompt = PROMPTS[0]
    with torch.inference_mode():
        for mode, paths in (("chain", ((0, 0, 0),)), ("tree", ((0, 0), (1,))), ("batch", ((0, 0), (1, 0)))):
            tc, _ = be.start(len(prompt), 16)
            be.prefill(tc, prompt, True)
            order.clear()
            tokens = [5] * len(trie_nodes(paths))
            be.verify(tc, mode, paths, 3, tokens, len(prompt), True, mark=lambda: order.append("mark"))
            assert order == ["inputs", "mark", "forward"], mode
    marks = []
    hf = HFBackend(target, draft)
    with torch.inference_mode():
        tc, _ = hf.start(len(prompt), 16)
        hf.prefill(tc, prompt, True)
        hf.verify(tc, "chain", ((0, 0),), 3, [5, 5], len(prompt), True, mark=lambda: marks.append(1))
    assert marks == [1]
    dec = Decoder(target, draft, parse_policy("fixed(b=6)+gate(min_prob=0.3)"), LoopConfig(max_new_tokens=MAX_NEW),
                  backend="graph")
    assert all(c["target_s"] > 0 for c in dec.run(0, PROMPTS[0]).cycles)


def test_stages_that_cannot_compile_leave_the_eager_ones(pair, monkeypatch):
    """A compiler failure in the backend's warm-up (the model's own dtype and shapes)
    leaves a working backend on the eager stages, says why, and records the failure for
    the device (``fused_stages`` then hands out the eager stages)."""
    import specreplay.models.fast as fast
    from dataclasses import replace

    def broken(*a, **k):
        raise RuntimeError("no kernel for this dtype\nsecond line")
    monkeypatch.setattr(fast, "StepGraph", _Replay)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(fast, "_FUSED", {})
    monkeypatch.setattr(fast, "fused_stages",
                        lambda device: (replace(fast.EAGER, swiglu=broken, name="compiled"), "compiled"))
    target, draft = pair
    be = GraphBackend(target, draft, capture=True)
    assert be.fast.stages is fast.EAGER and be.fdraft.stages is fast.EAGER
    assert be.fusion == "eager elementwise stages: torch.compile failed (RuntimeError: no kernel for this dtype)"
    assert fast._FUSED == {"cpu": be.fusion}


def test_the_setup_names_the_stages_the_graph_backend_ran(pair):
    """run.json / profile.json setup carry the graph backend's stages (their times
    differ), so a profile of other stages does not pair silently; hf setups do not."""
    from specreplay.live.backend import backend_stages
    from specreplay.live.profiler import describe_setup
    target, draft = pair
    stages = backend_stages("graph", target, draft)
    assert stages == backend_for("graph", target, draft).fusion == "eager elementwise stages (no graph capture)"
    assert backend_stages("hf", target, draft) is None
    assert describe_setup(target, "cpu", "graph", stages)["stages"] == stages
    assert "stages" not in describe_setup(target, "cpu", "hf")


def test_staged_inputs_arrive_in_one_copy_into_the_same_views():
    """A captured pass's inputs are typed views of one buffer: a write lands every array
    in those same views (the graph's static inputs), and an array of another shape or
    dtype than its slot is refused rather than reinterpreted."""
    import numpy as np
    from specreplay.live.backend import Staged
    arrays = (np.arange(5, dtype=np.int64)[None], np.array([[True, False, True]]), np.arange(3, dtype=np.int64))
    st = Staged(arrays, torch.device("cpu"))
    views = st.write(arrays)
    assert [v.dtype for v in views] == [torch.int64, torch.bool, torch.int64]
    assert [tuple(v.shape) for v in views] == [(1, 5), (1, 3), (3,)]
    for v, a in zip(views, arrays):
        assert v.tolist() == a.tolist()
    again = (arrays[0] + 7, ~arrays[1], arrays[2] * 2)
    out = st.write(again)
    assert all(o is v for o, v in zip(out, views))
    for v, a in zip(views, again):
        assert v.tolist() == a.tolist()
    with pytest.raises(ValueError, match="does not fit"):
        st.write((arrays[0][:, :4], arrays[1], arrays[2]))
    with pytest.raises(ValueError, match="does not fit"):
        st.write((arrays[0].astype(np.int32), arrays[1], arrays[2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned staging buffer is the GPU path")
def test_staged_writes_back_to_back_each_land_on_the_gpu():
    """On a GPU a slot reuses one pinned host buffer: a write queued behind a long kernel
    must not be overwritten by the next write before its copy has run (each pass of a
    cycle sees its own inputs)."""
    import numpy as np
    from specreplay.live.backend import Staged
    dev = torch.device("cuda")
    first = (np.arange(4096, dtype=np.int64),)
    st = Staged(first, dev)
    seen = []
    big = torch.randn(4096, 4096, device=dev)
    for i in range(4):
        big @ big  # keeps the stream busy, so the copy below is still queued
        (view,) = st.write((first[0] + i,))
        seen.append(view.clone())  # stream-ordered: the copy this write queued
    torch.cuda.synchronize()
    for i, got in enumerate(seen):
        assert got.cpu().tolist() == (first[0] + i).tolist()


def test_a_views_generator_is_seeded_only_when_a_policy_draws():
    """The live view's rng draws exactly what ``default_rng(seed)`` draws (so sampled
    decisions match the replay's), and costs nothing until a policy draws from it."""
    import copy
    import numpy as np
    from specreplay.live.drafting import LazyRng
    rng = LazyRng([3, 1, 40])
    assert rng._gen is None
    ref = np.random.default_rng([3, 1, 40]).random(6).tolist()
    assert rng.random(4).tolist() == ref[:4]
    assert rng.random(2).tolist() == ref[4:]  # one stream, seeded once
    fresh = copy.deepcopy(LazyRng([5]))
    assert fresh.random() == np.random.default_rng([5]).random()
    with pytest.raises(AttributeError):
        rng._missing


@pytest.mark.parametrize("decoded_first", [False, True])
def test_the_graph_backend_runs_outside_inference_mode(pair, decoded_first):
    """A caller that has not turned autograd off (a benchmark's check, a notebook) gets
    the same passes: prefill, draft, verify and commit write the caches in place, also
    caches a decode made inside inference mode first."""
    target, draft = pair
    be = GraphBackend(target, draft, capture=False)
    prompt = PROMPTS[0]
    if decoded_first:
        Decoder(target, draft, parse_policy("fixed(b=4)"), LoopConfig(max_new_tokens=8), backend=be).run(0, prompt)
    tc, dc = be.start(len(prompt), 16)
    logits, feats = be.prefill(tc, prompt, True)
    block = [5] + [draft.mask_token_id] * 3
    d = be.draft_pass(dc, block, feats, 0, len(prompt))
    v = be.verify(tc, "chain", ((0, 0),), 5, [6, 7], len(prompt), True)
    kept = be.commit(tc, v, 0, 1, len(prompt))
    assert not (logits.requires_grad or d.requires_grad or v.node_logits.requires_grad or kept.requires_grad)
    assert tc.length == len(prompt) + 2
