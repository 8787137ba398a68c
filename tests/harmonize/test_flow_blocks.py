"""Shared image-flow blocks: invertibility, log-determinants vs autograd, multiscale log-density."""

import math

import pytest
import torch

from bidsharmony.flows import (
    AffineCoupling, MultiscaleFlow, SequentialFlow, ShallowUNet, SqueezeLayer, UnsqueezeLayer,
)
from bidsharmony.flows.dequantization import uniform_dequantize

torch.set_num_threads(1)


def _perturb(module, seed=0, scale=0.05):
    """Move every parameter off its (identity) initialisation so the tests test something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module


def _jacobian_logdet(layer, x):
    """log|det J| of one sample by brute-force autograd (x: (1, C, H, W))."""
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(x.shape))[0].flatten(), x.flatten())
    return torch.linalg.slogdet(jacobian)[1]


LAYERS = {
    "checkerboard-0": lambda: AffineCoupling(1, "checkerboard", 0, hidden_channels=(4, 8)),
    "checkerboard-1": lambda: AffineCoupling(2, "checkerboard", 1, hidden_channels=(4, 8)),
    "channel-0": lambda: AffineCoupling(4, "channel", 0, hidden_channels=(4, 8)),
    "channel-1-odd": lambda: AffineCoupling(3, "channel", 1, hidden_channels=(4, 8)),
    "squeeze": SqueezeLayer,
    "unsqueeze": UnsqueezeLayer,
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_inverts_and_logdet_matches_autograd(name):
    torch.manual_seed(0)
    layer = _perturb(LAYERS[name]().double())
    channels = {"checkerboard-0": 1, "checkerboard-1": 2, "channel-0": 4, "channel-1-odd": 3,
                "squeeze": 1, "unsqueeze": 4}[name]
    x = torch.randn(2, channels, 4, 4, dtype=torch.float64)
    y, logdet = layer(x)
    if y.shape == x.shape:  # couplings: the perturbed layer is not the identity
        assert not torch.allclose(y, x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-4)
    for i in range(2):
        assert logdet[i].item() == pytest.approx(_jacobian_logdet(layer, x[i:i + 1]).item(), abs=1e-6)


def test_coupling_starts_as_identity():
    layer = AffineCoupling(1, "checkerboard", 0, hidden_channels=(4, 8))
    x = torch.randn(2, 1, 8, 8)
    y, logdet = layer(x)
    assert torch.allclose(y, x) and torch.allclose(logdet, torch.zeros(2))


def test_sequential_flow_sums_logdets_and_inverts():
    torch.manual_seed(1)
    layers = [AffineCoupling(1, "checkerboard", 0, hidden_channels=(4,)), SqueezeLayer(),
              AffineCoupling(4, "channel", 1, hidden_channels=(4,))]
    flow = _perturb(SequentialFlow(layers).double())
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    y, logdet = flow(x)
    assert torch.allclose(flow.inverse(y), x, atol=1e-4)
    assert logdet.item() == pytest.approx(_jacobian_logdet(flow, x).item(), abs=1e-6)


@pytest.mark.parametrize("factor_out", [True, False])
def test_multiscale_inverts_and_log_prob_is_base_plus_logdet(factor_out):
    torch.manual_seed(2)
    flow = _perturb(MultiscaleFlow(1, num_scales=3, steps_per_scale=2, factor_out=factor_out,
                                   step_factory=_small_factory).double())
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    z, logdet = flow(x)
    assert z.shape == (3, 64)
    assert torch.allclose(flow.inverse(z), x, atol=1e-4)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + logdet
    log_prob = flow.log_prob(x)
    assert torch.isfinite(log_prob).all() and torch.allclose(log_prob, expected)
    assert logdet[0].item() == pytest.approx(_jacobian_logdet(flow, x[:1]).item(), abs=1e-5)
    bpd = flow.bits_per_dim(x)
    assert torch.allclose(bpd, (-log_prob / 64 + math.log(256)) / math.log(2))
    samples = flow.sample(2, (1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 1, 8, 8) and torch.isfinite(samples).all()


def _small_factory(channels, scale, step):
    mask = "checkerboard" if scale == 0 else "channel"
    return AffineCoupling(channels, mask, step % 2, hidden_channels=(4,))


def test_multiscale_rejects_bad_sides():
    flow = MultiscaleFlow(1, num_scales=3, steps_per_scale=1, step_factory=_small_factory)
    with pytest.raises(ValueError, match="divisible by 4"):
        flow(torch.rand(1, 1, 6, 6))


def test_unet_shapes_and_bottleneck():
    net = ShallowUNet(1, 3, channels=(4, 8, 8))
    out, bottleneck = net.forward_with_bottleneck(torch.rand(2, 1, 16, 16))
    assert out.shape == (2, 3, 16, 16) and bottleneck.shape == (2, 8, 4, 4)


def test_uniform_dequantization_stays_within_one_level():
    x = torch.rand(1000)
    generator = torch.Generator().manual_seed(0)
    y = uniform_dequantize(x, num_bins=16, generator=generator)
    levels = torch.round(x * 15)
    assert ((y * 16 - levels) >= 0).all() and ((y * 16 - levels) < 1).all()
    assert torch.equal(y, uniform_dequantize(x, 16, torch.Generator().manual_seed(0)))
