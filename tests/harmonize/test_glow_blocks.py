"""NSF-Glow blocks: exact inverses and log-determinants that match autograd."""

import pytest
import torch

from bidsharmony.flows.glow import (
    ActNorm, GlowStep, InvertibleConv1x1, RQSplineCoupling, build_nsf_glow, squeeze2d, unsqueeze2d,
)

torch.set_num_threads(1)


def _randomize(module, seed=0, scale=0.3):
    """Non-trivial weights (zero-initialised outputs would make couplings the identity).

    Deep stacks get a smaller ``scale``: large random spline slopes compound into an
    ill-conditioned map whose float64 round trip is no longer exact to 1e-4.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return module.eval()


def _autograd_logdet(layer, x):
    """log|det J| of one sample by building the full Jacobian."""
    def flat(v):
        return layer(v.reshape(x.shape))[0].flatten()
    jac = torch.autograd.functional.jacobian(flat, x.flatten())
    return torch.linalg.slogdet(jac)[1]


LAYERS = {
    "actnorm": lambda: ActNorm(4),
    "conv1x1": lambda: InvertibleConv1x1(4, torch.Generator().manual_seed(1)),
    "coupling": lambda: RQSplineCoupling(4, hidden_channels=8, num_blocks=1, num_bins=5, tail_bound=2.0),
    "step": lambda: GlowStep(4, hidden_channels=8, num_blocks=1, num_bins=5, tail_bound=2.0),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_inverse_and_logdet(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    layer(torch.randn(8, 4, 4, 4, dtype=torch.float64))  # actnorm's data-dependent initialisation
    _randomize(layer)
    # values beyond the tail bound exercise the linear tails too
    x = 1.5 * torch.randn(3, 4, 4, 4, dtype=torch.float64)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (3,)
    assert torch.allclose(layer.inverse(y), x, atol=1e-4)
    for k in range(3):
        assert torch.allclose(logdet[k], _autograd_logdet(layer, x[k:k + 1]), atol=1e-4)


def test_actnorm_initialises_to_zero_mean_unit_variance():
    x = 3.0 + 2.0 * torch.randn(16, 2, 8, 8)
    y, _ = ActNorm(2)(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(y.std(dim=(0, 2, 3)), torch.ones(2), atol=1e-3)


def test_squeeze_round_trip():
    x = torch.randn(2, 3, 8, 6)
    assert squeeze2d(x).shape == (2, 12, 4, 3)
    assert torch.equal(unsqueeze2d(squeeze2d(x)), x)


def test_multiscale_flow_inverse_logdet_and_shape():
    torch.manual_seed(0)
    flow = build_nsf_glow(levels=2, steps_per_level=1, hidden_channels=8, num_bins=4, tail_bound=3.0).double()
    flow(torch.rand(8, 1, 8, 8, dtype=torch.float64))
    _randomize(flow, seed=3, scale=0.1)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    z, logdet = flow(x)
    assert z.shape == x.shape
    assert torch.allclose(flow.inverse(z), x, atol=1e-4)
    assert torch.allclose(logdet[0], _autograd_logdet(flow, x[:1]), atol=1e-4)
    log_prob = flow.log_prob(x)
    assert torch.isfinite(log_prob).all() and log_prob.shape == (2,)


def test_multiscale_flow_rejects_bad_sizes():
    flow = build_nsf_glow(levels=2, steps_per_level=1, hidden_channels=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        flow(torch.rand(1, 1, 6, 8))
