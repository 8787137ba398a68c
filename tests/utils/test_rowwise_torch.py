"""Fixed-order torch products: the same numbers as BLAS to rounding, and the same bits for a
row wherever it sits among the others."""

from __future__ import annotations

import pytest
import torch

from bidsharmony.utils.rowwise_torch import (
    fixed_order_matmul,
    fixed_order_products,
    fixed_order_solve_triangular,
)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(3)


def _random(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("left_shape, right_shape", [((37, 21), (21, 9)), ((21,), (21, 9)), ((37, 21), (21,)),
                                                     ((4, 3, 5), (4, 5, 2)), ((4, 3, 5), (5, 2))])
def test_fixed_order_matmul_agrees_with_torch(generator, left_shape, right_shape):
    left, right = _random(generator, *left_shape), _random(generator, *right_shape)
    expected = torch.matmul(left, right)
    result = fixed_order_matmul(left, right)
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected, rtol=1e-13, atol=1e-13)


def test_a_row_of_a_product_does_not_depend_on_its_position(generator):
    rows, weight = _random(generator, 255, 21), _random(generator, 21, 290)
    order = torch.randperm(255, generator=generator)
    whole = fixed_order_matmul(rows, weight)
    assert torch.equal(fixed_order_matmul(rows[order], weight), whole[order])
    assert torch.equal(fixed_order_matmul(rows[7:8], weight), whole[7:8])


def test_blocks_of_rows_give_the_same_bits_as_one_block(generator, monkeypatch):
    rows, weight = _random(generator, 100, 13), _random(generator, 13, 7)
    whole = fixed_order_matmul(rows, weight)
    monkeypatch.setattr("bidsharmony.utils.rowwise_torch._BLOCK_ELEMENTS", 7 * 16)  # blocks of 16 rows
    assert torch.equal(fixed_order_matmul(rows, weight), whole)
    torch.testing.assert_close(whole, rows @ weight, rtol=1e-13, atol=1e-13)


def test_an_empty_inner_dimension_gives_zeros_and_gradients_flow(generator):
    assert torch.equal(fixed_order_matmul(_random(generator, 5, 0), _random(generator, 0, 3)),
                       torch.zeros(5, 3, dtype=torch.float64))
    weight = _random(generator, 4, 3).requires_grad_()
    fixed_order_matmul(_random(generator, 5, 4), weight).sum().backward()
    assert weight.grad is not None and weight.grad.shape == (4, 3)


def test_mismatched_shapes_are_refused(generator):
    with pytest.raises(ValueError, match="cannot multiply"):
        fixed_order_matmul(_random(generator, 3, 4), _random(generator, 5, 2))


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("left", [True, False])
def test_fixed_order_triangular_solve_agrees_with_torch(generator, upper, left):
    matrix = _random(generator, 6, 6).tril() + 4 * torch.eye(6, dtype=torch.float64)
    matrix = matrix.T.contiguous() if upper else matrix
    rhs = _random(generator, 6, 40) if left else _random(generator, 40, 6)
    expected = torch.linalg.solve_triangular(matrix, rhs, upper=upper, left=left)
    result = fixed_order_solve_triangular(matrix, rhs, upper=upper, left=left)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(NotImplementedError):
        fixed_order_solve_triangular(matrix.expand(2, 6, 6), rhs, upper=upper, left=left)


def test_the_mode_routes_layers_operators_and_solves_to_the_fixed_order(generator):
    linear = torch.nn.Linear(21, 9).double()
    inputs = _random(generator, 64, 21)
    lower = _random(generator, 21, 21).tril() + 5 * torch.eye(21, dtype=torch.float64)
    with fixed_order_products():
        assert not torch.is_grad_enabled()
        layer = linear(inputs)
        operator = inputs @ linear.weight.T
        added = torch.addmm(linear.bias, inputs, linear.weight.T)
        solved = torch.linalg.solve_triangular(lower, inputs.T, upper=False)
    expected = fixed_order_matmul(inputs, linear.weight.T)
    assert torch.equal(operator, expected)
    assert torch.equal(layer, expected + linear.bias)
    assert torch.equal(added, expected + linear.bias)
    assert torch.equal(solved, fixed_order_solve_triangular(lower, inputs.T, upper=False))
    assert torch.is_grad_enabled()
