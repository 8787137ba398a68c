"""Monotone splines and flow layers: exact inverses and correct log-determinants."""

import pytest
import torch

from bidsharmony.scm import flows, splines

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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows, levels", [(40, 1), (50, 3), (700, 3), (30, 30)])
def test_shared_level_evaluation_matches_per_row_tables(kind, rows, levels):
    """evaluate_levels (one gather into the (L, D, K) table, whose backward pass is compiled)
    gives the values of evaluate_spline on per-row tables (to the last bit) and the
    gradients of autograd through it (to 1e-12 relative); 700 rows take the grouped search."""
    generator = torch.Generator().manual_seed(rows + levels)
    inputs = (torch.randn(rows, 3, generator=generator, dtype=torch.float64) * 2.5).requires_grad_(True)
    params = (torch.randn(levels, 3, splines.parameters_per_element(kind, 6), generator=generator,
                          dtype=torch.float64) * 1.5).requires_grad_(True)
    which = None if levels in (1, rows) else torch.randint(0, levels, (rows,), generator=generator)
    weights = torch.randn(2, rows, 3, generator=generator, dtype=torch.float64)

    def reference(inverse):
        knots = splines.spline_knots(kind, params, 6, 3.0)
        if which is not None:
            knots = {k: v[which] for k, v in knots.items()}
        return splines.evaluate_spline(kind, inputs, knots, inverse, 3.0)

    for inverse in (False, True):
        table = splines.spline_table(kind, params, 6, 3.0)
        fast = splines.evaluate_levels(kind, inputs, table, which, inverse, 3.0)
        slow = reference(inverse)
        # NumPy's float64 log differs from torch's in the last bit at most
        assert torch.allclose(fast[0], slow[0], rtol=1e-15, atol=0)
        assert torch.allclose(fast[1], slow[1], rtol=0, atol=1e-13)
        grads = [torch.autograd.grad((out[0] * weights[0] + out[1] * weights[1]).sum(), (inputs, params))
                 for out in (fast, slow)]
        for mine, autograd in zip(*grads):
            assert torch.allclose(mine, autograd, rtol=1e-12, atol=1e-12 * autograd.abs().max())
        with torch.no_grad():
            values_only, nothing = splines.evaluate_levels(kind, inputs, table, which, inverse, 3.0, logabsdet=False)
        # in the tails the values-only path adds the clamped-off part to the spline at the
        # bound (the bound up to rounding) instead of selecting the input
        assert nothing is None and torch.allclose(values_only, slow[0], rtol=0, atol=1e-12)


def _perturbed_layer(flow, context_features=4, shape_columns=(0, 1)):
    """An element-wise layer of 5 features moved away from its identity initialisation."""
    layer = flows.ConditionalElementwiseTransform(
        5, context_features, flow, num_bins=5, tail_bound=3.0,
        shape_columns=None if shape_columns is None else list(shape_columns)).double()
    for parameter in layer.parameters():
        parameter.data += 0.3 * torch.randn_like(parameter)
    return layer


def _discrete_and_continuous_context(n):
    """Two 0/1 columns (spline levels) and two continuous ones."""
    return torch.cat([torch.randint(0, 2, (n, 2)).double(), torch.randn(n, 2, dtype=torch.float64)], dim=1)


@pytest.mark.parametrize("flow", ["affine", "linear-spline", "quadratic-spline"])
def test_map_is_forward_and_inverse_without_logdet(flow):
    torch.manual_seed(1)
    layer = _perturbed_layer(flow)
    data = torch.randn(900, 5, dtype=torch.float64) * 2
    context = _discrete_and_continuous_context(900)
    with torch.no_grad():
        assert torch.allclose(layer.map(data, context), layer(data, context)[0], rtol=0, atol=1e-13)
        assert torch.allclose(layer.map(data, context, inverse=True), layer.inverse(data, context)[0],
                              rtol=0, atol=1e-13)


@pytest.mark.parametrize("flow", ["affine", "linear-spline", "quadratic-spline"])
@pytest.mark.parametrize("shape_columns", [[0, 1], None, []])
def test_compiled_map_equals_the_flow_layer(flow, shape_columns):
    """Transforms run each element-wise layer as one compiled pass; it must give the layer's
    own forward and inverse values, for shared, per-level and per-row spline shapes, inside
    the spline interval and in the identity tails."""
    torch.manual_seed(3)
    layer = _perturbed_layer(flow, shape_columns=shape_columns)
    data = torch.randn(700, 5, dtype=torch.float64) * 3  # about a third beyond the bound
    context = _discrete_and_continuous_context(700)
    free = _perturbed_layer(flow, context_features=None)  # a root node's layer: free parameters
    with torch.no_grad():
        for inverse in (False, True):
            for transform, given in ((layer, context), (free, None)):
                expected = (transform.inverse if inverse else transform)(data, given)[0]
                compiled = transform.map_compiled(data.numpy(), given, inverse=inverse)
                assert abs(compiled - expected.numpy()).max() < 1e-12


@pytest.mark.parametrize("flow", ["affine", "quadratic-spline"])
@pytest.mark.parametrize("changed", [[1], [0, 1, 2, 3]])
def test_compiled_transport_is_abduction_then_prediction(flow, changed):
    """A counterfactual through a layer runs compiled; when an intervention changes few
    context columns (one-hot site), the new affine parameters are updated from the change
    instead of recomputed: both give the layer's inverse of its forward."""
    torch.manual_seed(4)
    layer = _perturbed_layer(flow)
    data = torch.randn(300, 5, dtype=torch.float64) * 2
    context = _discrete_and_continuous_context(300)
    new_context = context.clone()
    new_context[:, changed] = torch.cat([1 - context[:, :2], context[:, 2:] + 0.5], dim=1)[:, changed]
    with torch.no_grad():
        expected = layer.inverse(layer(data, context)[0], new_context)[0]
        moved = layer.transport_compiled(data.numpy(), context, new_context)
        same = layer.transport_compiled(data.numpy(), context, context)
    assert abs(moved - expected.numpy()).max() < 1e-11
    assert abs(moved - data.numpy()).max() > 0.1  # the intervention did something
    assert abs(same - data.numpy()).max() < 1e-12


@pytest.mark.parametrize("flow", ["linear-spline", "quadratic-spline"])
@pytest.mark.parametrize("shape_columns", [[0, 1], None, [], "no context"])
def test_fused_training_layer_matches_its_pieces(flow, shape_columns):
    """Training runs an element-wise layer as one compiled, hand-differentiated kernel (affine
    step, spline, log-derivative); values and gradients equal the step-by-step autograd
    version, for per-level, per-row and shared spline shapes and for a root node's layer."""
    torch.manual_seed(2)
    unconditional = shape_columns == "no context"
    layer = (_perturbed_layer(flow, context_features=None) if unconditional
             else _perturbed_layer(flow, shape_columns=shape_columns))
    data = (torch.randn(64, 5, dtype=torch.float64) * 2).requires_grad_(True)
    context = None if unconditional else _discrete_and_continuous_context(64)
    weights = torch.randn(64, 5, dtype=torch.float64)
    outputs, logdet = layer(data, context)
    loc, scale = layer._location_scale(data, context)
    stepwise, spline_logdet = layer._spline((data - loc) / scale, context, inverse=False)
    stepwise_logdet = (spline_logdet - torch.log(scale)).sum(dim=-1)
    assert torch.allclose(outputs, stepwise, rtol=0, atol=1e-13)
    assert torch.allclose(logdet, stepwise_logdet, rtol=0, atol=1e-12)
    inputs = [data, *layer.parameters()]
    fused = torch.autograd.grad((outputs * weights).sum() + logdet.sum(), inputs)
    reference = torch.autograd.grad((stepwise * weights).sum() + stepwise_logdet.sum(), inputs)
    for mine, autograd in zip(fused, reference):
        assert torch.allclose(mine, autograd, rtol=1e-12, atol=1e-12 * autograd.abs().max())
