import math

import pytest
import torch

from ptame.loss import LossWeights, area_loss, ptame_loss, smoothness_loss


def test_area_loss_by_hand() -> None:
    maps = torch.tensor([0.0, 1.0, 0.25, 0.5])
    expected = sum((v + 0.0005) ** 0.3 for v in (0.0, 1.0, 0.25, 0.5)) / 4
    assert area_loss(maps, 0.3).item() == pytest.approx(expected, rel=1e-6)


def test_smoothness_loss_by_hand() -> None:
    # One 2x2 map [[a, b], [c, d]] in a batch of 1, q = 2, border 0.3.
    a, b, c, d = 0.1, 0.5, 0.3, 0.9
    maps = torch.tensor([[[[a, b], [c, d]]]])
    vertical = (c - a) ** 2 + (d - b) ** 2
    horizontal = (b - a) ** 2 + (d - c) ** 2
    edges = (a**2 + b**2) + (c**2 + d**2) + (a**2 + c**2) + (b**2 + d**2)
    expected = (vertical + horizontal + 0.3 * edges) / (2 * 1)
    assert smoothness_loss(maps, 2.0, 0.3).item() == pytest.approx(expected, rel=1e-6)


def test_smoothness_divides_by_batch_size() -> None:
    maps = torch.rand(1, 3, 5, 5)
    single = smoothness_loss(maps, 2.0, 0.3)
    doubled = smoothness_loss(torch.cat([maps, maps]), 2.0, 0.3)
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)


def test_ptame_loss_combines_terms_with_weights() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    maps = torch.full((2, 2, 3, 3), 0.5)
    weights = LossWeights(ce=1.5, area=2.0, smooth=0.01, area_power=0.3, smooth_power=2.0, border=0.3)
    loss, terms = ptame_loss(logits, targets, maps, weights)

    ce = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    area = 0.5005**0.3
    # A constant map has no gradient; its edges: 4 sides x 3 pixels x 0.25, per map, 4 maps.
    smooth = 0.3 * (4 * 3 * 0.25) * 4 / (2.0 * 2)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["area"].item() == pytest.approx(area, rel=1e-6)
    assert terms["smooth"].item() == pytest.approx(smooth, rel=1e-6)
    assert loss.item() == pytest.approx(1.5 * ce + 2.0 * area + 0.01 * smooth, rel=1e-5)


def test_smoothness_loss_by_hand_with_a_border() -> None:
    """Every neighbour difference and every edge pixel, summed in plain Python."""
    values = [[0.1, 0.7, 0.2, 0.9], [0.4, 0.0, 0.8, 0.3], [0.6, 0.5, 1.0, 0.2]]
    maps = torch.tensor(values).view(1, 1, 3, 4).repeat(2, 1, 1, 1)
    maps[1] = maps[1] ** 2
    power, border = 2.0, 0.3
    total = 0.0
    for grid in (values, [[value**2 for value in row] for row in values]):
        rows, columns = len(grid), len(grid[0])
        total += sum(abs(grid[r + 1][c] - grid[r][c]) ** power for r in range(rows - 1) for c in range(columns))
        total += sum(abs(grid[r][c + 1] - grid[r][c]) ** power for r in range(rows) for c in range(columns - 1))
        edges = [grid[0][c] for c in range(columns)] + [grid[rows - 1][c] for c in range(columns)]
        edges += [grid[r][0] for r in range(rows)] + [grid[r][columns - 1] for r in range(rows)]
        total += border * sum(value**power for value in edges)
    expected = total / (power * 2)
    assert smoothness_loss(maps, power, border).item() == pytest.approx(expected, rel=1e-6)


def test_loss_weights_as_a_plain_dict_for_logs() -> None:
    weights = LossWeights(ce=1.0, area=4.0, smooth=0.01, area_power=0.5, smooth_power=1.0, border=0.0)
    expected = {"ce": 1.0, "area": 4.0, "smooth": 0.01, "area_power": 0.5, "smooth_power": 1.0, "border": 0.0}
    assert weights.as_dict() == expected


def smoothness_by_hand(grids: list[list[list[float]]], power: float, border: float) -> float:
    """The docstring's formula in plain Python, for a batch of one-channel maps given as lists of
    rows: every vertical and horizontal neighbour difference's |.|^q, plus ``border`` times the
    q-th powers of the first row, the last row, the first column and the last column (so a
    corner is counted twice), all divided by q times the batch size."""
    total = 0.0
    for grid in grids:
        rows, columns = len(grid), len(grid[0])
        total += sum(abs(grid[r + 1][c] - grid[r][c]) ** power for r in range(rows - 1) for c in range(columns))
        total += sum(abs(grid[r][c + 1] - grid[r][c]) ** power for r in range(rows) for c in range(columns - 1))
        first_row = sum(grid[0][c] ** power for c in range(columns))
        last_row = sum(grid[rows - 1][c] ** power for c in range(columns))
        first_column = sum(grid[r][0] ** power for r in range(rows))
        last_column = sum(grid[r][columns - 1] ** power for r in range(rows))
        total += border * (first_row + last_row + first_column + last_column)
    return total / (power * len(grids))


def test_smoothness_loss_by_hand_with_q_3() -> None:
    """One 2x2 map [[a, b], [c, d]], q = 3: the cubes of |differences| (c - a and d - c are
    negative: the absolute value matters for an odd q), edges with each corner twice, over 3 * 1."""
    a, b, c, d = 0.8, 0.2, 0.5, 0.1
    maps = torch.tensor([[[[a, b], [c, d]]]])
    vertical = abs(c - a) ** 3 + abs(d - b) ** 3  # 0.3^3 + 0.1^3
    horizontal = abs(b - a) ** 3 + abs(d - c) ** 3  # 0.6^3 + 0.4^3
    edges = 2 * (a**3 + b**3 + c**3 + d**3)  # every pixel of a 2x2 map is a corner: 2 * 0.646
    expected = (vertical + horizontal + 0.3 * edges) / (3 * 1)
    assert expected == pytest.approx((0.027 + 0.001 + 0.216 + 0.064 + 0.3 * 2 * 0.646) / 3)
    assert smoothness_loss(maps, 3.0, 0.3).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("power", [3.0, 1.5, 1.0])
def test_smoothness_loss_by_hand_with_other_exponents(power: float) -> None:
    """A batch of two 3x4 maps, q != 2, against the formula in plain Python."""
    first = [[0.1, 0.7, 0.2, 0.9], [0.4, 0.0, 0.8, 0.3], [0.6, 0.5, 1.0, 0.2]]
    second = [[0.9, 0.3, 0.3, 0.0], [0.2, 0.6, 0.1, 0.75], [0.05, 0.4, 0.95, 0.5]]
    maps = torch.tensor([first, second]).unsqueeze(1)  # (2, 1, 3, 4)
    expected = smoothness_by_hand([first, second], power, 0.3)
    assert expected != pytest.approx(smoothness_by_hand([first, second], 2.0, 0.3), rel=1e-3)
    assert smoothness_loss(maps, power, 0.3).item() == pytest.approx(expected, rel=1e-6)


def test_ptame_loss_uses_the_smooth_power_of_its_weights() -> None:
    """LossWeights.smooth_power = 3 reaches the smoothness term (terms["smooth"]) and the loss."""
    first = [[0.1, 0.7, 0.2], [0.4, 0.0, 0.8], [0.6, 0.5, 1.0]]
    second = [[0.9, 0.3, 0.3], [0.2, 0.6, 0.1], [0.05, 0.4, 0.95]]
    # (b, B, h, w) with b = B = 2: image i's map for the batch's target j.
    target_maps = torch.tensor([[first, second], [second, first]])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    weights = LossWeights(ce=1.5, area=2.0, smooth=0.01, area_power=0.3, smooth_power=3.0, border=0.3)
    loss, terms = ptame_loss(logits, targets, target_maps, weights)

    ce = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    values = [v for grid in (first, second) for row in grid for v in row]
    area = sum((v + 0.0005) ** 0.3 for v in values) / len(values)
    # Four maps (2 images x 2 targets) over q * b = 3 * 2: smoothness_by_hand divides by 3 * 4,
    # the loss by 3 * 2 (b is the first dimension), hence the factor 2.
    smooth = 2 * smoothness_by_hand([first, second, second, first], 3.0, 0.3)
    assert terms["smooth"].item() == pytest.approx(smooth, rel=1e-6)
    assert loss.item() == pytest.approx(1.5 * ce + 2.0 * area + 0.01 * smooth, rel=1e-5)
