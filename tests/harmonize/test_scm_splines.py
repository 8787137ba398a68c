"""Monotone splines and flow layers: exact inverses and correct log-determinants."""

import pytest
import torch

from bidsharmony.harmonize.scm import flows, splines

KINDS = ["linear-rational", "rational-quadratic"]


def _random_spline(kind, shape=(500, 3), bins=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(shape, generator=generator, dtype=torch.float64) * 2.5  # some in the tails
    params = torch.randn(shape + (splines.parameters_per_element(kind, bins),), generator=generator,
                         dtype=torch.float64) * 1.5
    return inputs, params, bins


@pytest.mark.parametrize("kind", KINDS)
def test_inverse_is_exact_and_logdets_cancel(kind):
    inputs, params, bins = _random_spline(kind)
    outputs, logdet = splines.apply_spline(kind, inputs, params, bins, bound=3.0)
    back, inverse_logdet = splines.apply_spline(kind, outputs, params, bins, inverse=True, bound=3.0)
    assert torch.allclose(back, inputs, atol=1e-10, rtol=0)
    assert torch.allclose(logdet + inverse_logdet, torch.zeros_like(logdet), atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_logdet_equals_autograd_derivative_and_map_is_monotone(kind):
    inputs, params, bins = _random_spline(kind, seed=1)
    inputs.requires_grad_(True)
    outputs, logdet = splines.apply_spline(kind, inputs, params, bins, bound=3.0)
    (derivative,) = torch.autograd.grad(outputs.sum(), inputs)
    assert (derivative > 0).all()
    assert torch.allclose(torch.log(derivative), logdet, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_identity_outside_the_bound_and_identity_initialisation(kind):
    inputs = torch.tensor([-7.0, -3.5, 3.5, 9.0], dtype=torch.float64)
    params = torch.randn(4, splines.parameters_per_element(kind, 5), dtype=torch.float64)
    outputs, logdet = splines.apply_spline(kind, inputs, params, 5, bound=3.0)
    assert torch.equal(outputs, inputs) and torch.equal(logdet, torch.zeros(4, dtype=torch.float64))
    inside = torch.linspace(-2.9, 2.9, 11, dtype=torch.float64)
    identity = splines.identity_parameters(kind, 5).to(torch.float64).expand(11, -1)
    outputs, logdet = splines.apply_spline(kind, inside, identity, 5, bound=3.0)
    assert torch.allclose(outputs, inside, atol=1e-12) and torch.allclose(logdet, torch.zeros(11, dtype=torch.float64), atol=1e-12)


def test_linear_rational_gradients_are_finite_everywhere():
    """Both branches of each bin are evaluated on their own side of the joint: no NaN gradient."""
    inputs, params, bins = _random_spline("linear-rational", shape=(2000, 2), seed=2)
    params.requires_grad_(True)
    outputs, logdet = splines.apply_spline("linear-rational", inputs, params, bins, bound=3.0)
    (outputs.sum() + logdet.sum()).backward()
    assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("flow", flows.FLOWS)
@pytest.mark.parametrize("architecture", flows.ARCHITECTURES)
def test_conditional_flows_invert(flow, architecture):
    torch.manual_seed(0)
    transform = flows.build_feature_flow(4, 3, flow=flow, architecture=architecture, num_layers=2,
                                         hidden_features=16, num_bins=5).double()
    for parameter in transform.parameters():  # move away from the identity initialisation
        parameter.data += 0.1 * torch.randn_like(parameter)
    data = torch.randn(64, 4, dtype=torch.float64)
    context = torch.randn(64, 3, dtype=torch.float64)
    noise, logdet = transform(data, context=context)
    back, inverse_logdet = transform.inverse(noise, context=context)
    # autoregressive inverses run one pass per feature, so round-off accumulates a little more
    assert torch.allclose(back, data, atol=1e-8)
    assert torch.allclose(logdet + inverse_logdet, torch.zeros(64, dtype=torch.float64), atol=1e-8)
    assert flows.transform_is_sequential(transform) == (architecture == "autoregressive")
