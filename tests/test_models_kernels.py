"""models/kernels.py: the one-kernel attention softmax equals its eager reference
(softmax(scale * s + bias) in float32, rounded to the model dtype). On a GPU with Triton
it runs the kernel; elsewhere it must fall back to the reference exactly. The q/k norm +
RoPE + cache-write kernel and the few-row attention (GPU only) are held to a float64
computation of the same inputs."""
import importlib.util
import math

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.models import kernels  # noqa: E402
from specreplay.models.fast import masked_softmax  # noqa: E402

GPU = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def _case(device, kv=8, rows=4, cols=768, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(kv, rows, cols, generator=gen) * 30).to(device)
    visible = torch.rand(1, rows, cols, generator=gen) < 0.7
    visible[..., 0] = True  # every row sees at least one key, as every query sees itself
    bias = torch.zeros(1, rows, cols).masked_fill_(~visible, float("-inf")).to(torch.bfloat16).to(device)
    return s, bias


def test_off_the_gpu_the_reference_runs():
    s, bias = _case("cpu", cols=37)
    for b in (bias, None):
        assert torch.equal(kernels.masked_softmax(s, b, 0.088, torch.bfloat16),
                           masked_softmax(s, b, 0.088, torch.bfloat16))


@pytest.mark.skipif(not GPU, reason="needs a CUDA device with Triton")
@pytest.mark.parametrize("rows,cols", [(4, 768), (64, 528), (64, 1040), (36, 3000), (4, 20000)])
def test_the_kernel_equals_the_eager_softmax_to_a_bf16_rounding(rows, cols):
    s, bias = _case("cuda", rows=rows, cols=cols)
    for b in (bias, None):
        got = kernels.masked_softmax(s, b, 0.088, torch.bfloat16).float()
        want = masked_softmax(s, b, 0.088, torch.bfloat16).float()
        assert got.shape == want.shape
        # the two exp implementations differ in the last float32 bits: a value may round
        # to the neighbouring bf16 number, never further, and almost none do
        spacing = torch.maximum(want.abs(), torch.full_like(want, 2.0 ** -133)) * 2.0 ** -7
        assert bool(((got - want).abs() <= spacing).all())
        assert (got == want).float().mean().item() > 0.99
        if b is not None:
            assert bool((got[(b == float("-inf")).expand_as(got)] == 0).all())
        torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)), atol=2e-2, rtol=0)


def _exact_rope(qkv, norm, table, pos, heads, kv_heads, eps):
    """q and k heads [n, heads + kv_heads, D] from the same rounded inputs in float64: the
    per-head RMSNorm times its weight, then RoPE (``rope_table``'s sign-folded sin);
    and the size of the two RoPE terms, which bounds the float32 arithmetic's error."""
    n, D = qkv.shape[0], table.shape[-1]
    x = qkv[:, :(heads + kv_heads) * D].double().view(n, heads + kv_heads, D)
    if norm is not None:
        x = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * norm.double()
    cs = table[pos].double()
    cos, sin = cs[:, None, 0], cs[:, None, 1]
    rolled = torch.roll(x, D // 2, dims=-1)
    return x * cos + rolled * sin, (x * cos).abs() + (rolled * sin).abs()


@pytest.mark.skipif(not GPU, reason="needs a CUDA device with Triton")
@pytest.mark.parametrize("n,normed", [(1, True), (16, True), (7, False)])
def test_one_kernel_norms_rotates_and_writes_the_cache_rows(n, normed):
    """q (head-major) and the k rows written into the cache are the exact norm + RoPE of
    the kernel's bf16 inputs rounded once: within half a bf16 spacing of the float64
    result, plus float32's error on the terms; v is copied bit for bit; no other cache
    row changes; a k/v-only call (the draft's context append) writes the same rows."""
    from specreplay.models.fast import rope_table
    gen = torch.Generator().manual_seed(n)
    H, KV, D, C = 8, 2, 128, 64
    qkv = torch.randn(n, (H + 2 * KV) * D, generator=gen).to(torch.bfloat16).cuda()
    norm = (1 + torch.randn(H + KV, D, generator=gen) / 4).to(torch.bfloat16).cuda() if normed else None
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    table = rope_table(inv, 1.0, 256, torch.bfloat16, "cuda")
    pos = torch.randperm(200, generator=gen)[:n].cuda()
    rows = torch.randperm(C, generator=gen)[:n].cuda()
    want, terms = _exact_rope(qkv, norm, table, pos, H, KV, 1e-6)
    tol = want.abs() * 2.0 ** -8 + terms * 2.0 ** -20
    for first in (0, H):
        k_cache = torch.randn(1, KV, C, D, generator=gen).to(torch.bfloat16).cuda()
        v_cache = torch.randn(1, KV, C, D, generator=gen).to(torch.bfloat16).cuda()
        k0, v0 = k_cache.clone(), v_cache.clone()
        assert kernels.rope_cache_fits(qkv, norm, table, k_cache)
        q = kernels.qk_rope_cache(qkv[:, first * D:].contiguous(), norm, table, pos, rows, k_cache, v_cache,
                                  H, KV, 1e-6, first=first)
        got_k = k_cache[0][:, rows].transpose(0, 1).double()        # [n, KV, D]
        assert bool(((got_k - want[:, H:]).abs() <= tol[:, H:]).all())
        assert torch.equal(v_cache[0][:, rows].transpose(0, 1), qkv[:, (H + KV) * D:].view(n, KV, D))
        others = torch.ones(C, dtype=torch.bool, device="cuda")
        others[rows] = False
        assert torch.equal(k_cache[:, :, others], k0[:, :, others])
        assert torch.equal(v_cache[:, :, others], v0[:, :, others])
        if first == 0:
            assert q.shape == (H, n, D)
            assert bool(((q.transpose(0, 1).double() - want[:, :H]).abs() <= tol[:, :H]).all())
        else:
            assert q is None


def _distinct_top(n, V, dtype, seed=0):
    """Logits [n, V] whose five largest values per row are 20, 19.5, ..., 18 (exact in
    every dtype) at random columns, above a random body: the top-k ids are known."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, V, generator=gen) * 3
    cols = torch.stack([torch.randperm(V, generator=gen)[:5] for _ in range(n)])
    x.scatter_(1, cols, torch.tensor([20.0, 19.5, 19.0, 18.5, 18.0]).expand(n, -1).contiguous())
    return x.to(dtype).cuda(), cols


@pytest.mark.skipif(not GPU, reason="needs a CUDA device with Triton")
@pytest.mark.parametrize("V", [151936, 4097, 50])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_one_read_topk_equals_the_reference_top_k(V, dtype):
    from specreplay.live.drafting import topk_on_device
    logits, cols = _distinct_top(37, V, dtype)
    assert kernels.topk_fits(logits, 4)
    ids, lps = kernels.topk_logsumexp(logits, 4)
    want_ids, want_lps = topk_on_device(logits, 4)
    assert ids.dtype == torch.int32 and lps.dtype == torch.float32
    assert torch.equal(ids.long().cpu(), cols[:, :4])
    assert torch.equal(ids, want_ids)
    # the logsumexp adds in another order: the float16 rounding may land one step over
    step = torch.abs(want_lps).clamp_min(2.0 ** -14) * 2.0 ** -10
    assert bool(((lps - want_lps).abs() <= step).all())
    assert (lps == want_lps).float().mean().item() >= 0.95


@pytest.mark.skipif(not GPU, reason="needs a CUDA device with Triton")
def test_one_read_topk_breaks_ties_to_the_lower_id_and_skips_masked_tiles():
    V = 151936
    flat = torch.zeros(2, V, device="cuda", dtype=torch.bfloat16)
    flat[1, :9000] = float("-inf")  # two whole tiles and part of a third masked out
    ids, lps = kernels.topk_logsumexp(flat, 4)
    assert ids[0].tolist() == [0, 1, 2, 3] and ids[1].tolist() == [9000, 9001, 9002, 9003]
    want = torch.tensor([-math.log(V), -math.log(V - 9000)]).to(torch.float16).float()
    assert torch.equal(lps.cpu(), want[:, None].expand(2, 4))


def _attention_case(kv, rows, keys, visible_share, seed=0, capacity_extra=40, dtype=torch.bfloat16, D=128,
                    device="cuda"):
    """q [kv, rows, D]; k, v [kv, keys, D] as views of a larger cache (heads at the
    cache's stride, rows past ``keys`` holding other values); an additive bias [1, rows,
    keys] where each row sees key 0 and one key of its own, plus a share of the others."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(kv, rows, D, generator=gen).to(dtype).to(device)
    cache = torch.randn(2, kv, keys + capacity_extra, D, generator=gen).to(dtype).to(device)
    k, v = cache[0, :, :keys], cache[1, :, :keys]
    visible = torch.rand(1, rows, keys, generator=gen) < visible_share
    visible[..., 0] = True
    visible[0, torch.arange(rows), torch.arange(rows) % keys] = True
    bias = torch.zeros(1, rows, keys).masked_fill_(~visible, float("-inf")).to(dtype).to(device)
    return q, k, v, bias


def _attention64(q, k, v, bias, scale):
    s = torch.einsum("hrd,hsd->hrs", q.double(), k.double()) * scale
    if bias is not None:
        s = s + bias.double()
    return torch.einsum("hrs,hsd->hrd", torch.softmax(s, -1), v.double())


@pytest.mark.skipif(not GPU, reason="needs a CUDA device with Triton")
@pytest.mark.parametrize("rows,keys,share,D,dtype", [
    (4, 768, 0.7, 128, torch.bfloat16), (64, 784, 0.9, 128, torch.bfloat16), (17, 65, 0.5, 128, torch.bfloat16),
    (100, 1300, 0.7, 128, torch.bfloat16), (256, 2048, 0.8, 128, torch.bfloat16), (4, 1, 1.0, 128, torch.bfloat16),
    (16, 129, 0.02, 128, torch.bfloat16), (64, 640, 0.0, 128, torch.bfloat16), (4, 9000, 0.3, 128, torch.bfloat16),
    (32, 700, 0.7, 64, torch.float16), (4, 3000, 0.5, 64, torch.bfloat16)])
def test_few_row_attention_is_as_close_to_float64_as_the_batched_matmuls(rows, keys, share, D, dtype):
    """Every split of the keys (one key tile a chunk and several), tile of rows and
    masked-out stretch (share 0: a row sees key 0 and one more, so most chunks of its
    keys see nothing) merges to the attention: no further from a float64 computation
    than the two batched matmuls it replaces."""
    from specreplay.models.fast import small_attention
    q, k, v, bias = _attention_case(8, rows, keys, share, dtype=dtype, D=D)
    scale = D ** -0.5
    assert kernels.few_rows_fit(q, k, v, bias)
    for b in (bias, None):
        got = kernels.few_row_attention(q, k, v, b, scale)
        assert got.shape == q.shape and got.dtype == q.dtype
        exact = _attention64(q, k, v, b, scale)
        ref = (small_attention(q, k, v, b, scale, kernels.masked_softmax).double() - exact).abs().max().item()
        err = (got.double() - exact).abs().max().item()
        assert err <= 1.25 * ref + 2.0 ** -12, (err, ref)


@pytest.mark.skipif(not GPU, reason="needs a CUDA device with Triton")
def test_few_row_attention_reads_no_key_it_may_not_see():
    q, k, v, bias = _attention_case(8, 64, 700, 0.5)
    bias[..., 300:500] = float("-inf")   # hidden from every row (each row's own key is < 64)
    got = kernels.few_row_attention(q, k, v, bias, 0.088)
    k2, v2 = k.clone(), v.clone()
    k2[:, 300:500], v2[:, 300:500] = 1e4, 1e4
    assert torch.equal(kernels.few_row_attention(q, k2, v2, bias, 0.088), got)
    # nor a cache row past the keys (the views' rows 700.. of the same cache)
    for t in (k, v):
        t.as_strided((8, 740, 128), t.stride(), t.storage_offset())[:, 700:] = 1e4
    assert torch.equal(kernels.few_row_attention(q, k, v, bias, 0.088), got)


@pytest.mark.skipif(not GPU, reason="needs a CUDA device with Triton")
def test_few_row_attention_replays_from_a_cuda_graph():
    """Captured once, replayed over new query values in its static input: the eager
    call's result (the scratch it allocates comes from the graph's pool)."""
    q, k, v, bias = _attention_case(8, 64, 784, 0.9)
    kernels.few_row_attention(q, k, v, bias, 0.088)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.few_row_attention(q, k, v, bias, 0.088)
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, kernels.few_row_attention(q, k, v, bias, 0.088))


def test_the_few_row_layout_check_admits_cache_views_and_nothing_it_would_misread():
    q, k, v, bias = _attention_case(8, 64, 300, 0.5, device="cpu")
    assert kernels.few_rows_layout(q, k, v, bias) and kernels.few_rows_layout(q, k, v, None)
    assert kernels.few_rows_layout(q, k, v, bias[None])          # [1, 1, R, S]: the same values
    assert not kernels.few_rows_fit(q, k, v, bias)               # a CPU tensor: the matmuls run
    bad = {
        "a query per head of its own stride": (q.transpose(0, 1).contiguous().transpose(0, 1), k, v, bias),
        "4-d queries": (q[None], k, v, bias),
        "a bias per KV head": (q, k, v, bias.expand(8, -1, -1).contiguous()),
        "a bias of other keys": (q, k, v, bias[..., :299].contiguous()),
        "a bias laid out keys first": (q, k, v, bias.transpose(-1, -2).contiguous()),
        "strided bias": (q, k, v, torch.cat((bias, bias), -1)[..., :300]),
        "keys whose rows are not contiguous": (q, k.transpose(1, 2).contiguous().transpose(1, 2), v, bias),
        "values of other keys": (q, k, v[:, :299], bias),
        "head size 96": (q[..., :96].contiguous(), k[..., :96].contiguous(), v[..., :96].contiguous(), bias),
        "more rows than the few-row route takes": (torch.zeros(8, 257, 128), k, v, None),
    }
    for why, args in bad.items():
        assert not kernels.few_rows_layout(*args), why
