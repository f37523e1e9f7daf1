"""models/kernels.py: the one-kernel attention softmax equals its eager reference
(softmax(scale * s + bias) in float32, rounded to the model dtype). On a GPU with Triton
it runs the kernel; elsewhere it must fall back to the reference exactly."""
import importlib.util

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
