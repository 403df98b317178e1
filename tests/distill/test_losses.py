import math

import pytest
import torch

from workers.distill import losses as L


def test_attention_mse_ignores_padded_rows_and_keys() -> None:
    mask = torch.tensor([[1, 1, 0]])
    s = torch.zeros(1, 1, 3, 3)
    t = torch.zeros(1, 1, 3, 3)
    t[0, 0, :2, :2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t[0, 0, 2, :] = 100.0  # a padded query row
    t[0, 0, :, 2] = 100.0  # a padded key column
    assert L.attention_mse(s, t, mask).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_attention_mse_is_a_mean_over_heads() -> None:
    mask = torch.tensor([[1, 1, 0]])
    s = torch.zeros(1, 3, 3, 3)
    t = torch.stack([torch.full((3, 3), float(h + 1)) for h in range(3)]).unsqueeze(0)
    # head h is off by h + 1 on each of the 4 pairs of real tokens: (1 + 4 + 9) / 3 heads
    assert L.attention_mse(s, t, mask).item() == pytest.approx(14 / 3)
    # the mean is per head: twice the heads of the same error is the same loss
    assert L.attention_mse(torch.zeros(1, 6, 3, 3), torch.ones(1, 6, 3, 3), mask).item() == 1.0


def test_attention_scores_are_qkt_over_sqrt_d() -> None:
    q = torch.tensor([[[1.0, 0.0, 2.0, 0.0]]])  # (b=1, L=1, 2 heads x d=2)
    k = torch.tensor([[[3.0, 0.0, 1.0, 1.0]]])
    scores = L.attention_scores(q, k, num_heads=2)
    assert scores.shape == (1, 2, 1, 1)
    assert scores.flatten().tolist() == pytest.approx([3 / math.sqrt(2), 2 / math.sqrt(2)])


def test_hidden_mse_averages_over_real_tokens_only() -> None:
    mask = torch.tensor([[1, 0]])
    s = torch.tensor([[[1.0, 1.0], [9.0, 9.0]]])
    t = torch.tensor([[[0.0, 3.0], [0.0, 0.0]]])
    assert L.hidden_mse(s, t, mask).item() == pytest.approx((1 + 4) / 2)


def test_soft_cross_entropy_matches_the_formula() -> None:
    z_s, z_t = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])
    # p_t = (.5, .5), log p_s = (log .25, log .75)
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert L.soft_cross_entropy(z_s, z_t).item() == pytest.approx(expected)
    # temperature 2 halves the logits
    z_s2 = torch.tensor([[0.0, 2 * math.log(3.0)]])
    assert L.soft_cross_entropy(z_s2, z_t, temperature=2.0).item() == pytest.approx(expected)


def test_hard_and_regression_losses() -> None:
    logits = torch.tensor([[0.0, 0.0]])
    assert L.hard_cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(math.log(2))
    assert L.regression_mse(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])).item() == 2.5


def test_hard_losses_leave_out_rows_without_a_label() -> None:
    logits = torch.tensor([[0.0, 0.0], [9.0, -9.0]])
    assert L.hard_cross_entropy(logits, torch.tensor([1, L.NO_CLASS])).item() == pytest.approx(
        math.log(2)
    )
    assert L.hard_cross_entropy(logits, torch.tensor([L.NO_CLASS, L.NO_CLASS])).item() == 0.0
    pred = torch.tensor([[1.0], [3.0]])
    assert L.label_mse(pred, torch.tensor([0.0, float("nan")])).item() == 1.0
    assert L.label_mse(pred, torch.tensor([float("nan")] * 2)).item() == 0.0


def test_relation_kl_is_zero_for_equal_relations_across_widths_and_ignores_padding() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0]])
    x_t = torch.randn(1, 4, 8)
    # A student of half the width with the same per-head geometry: relations are equal.
    x_s = x_t.view(1, 4, 2, 4)[:, :, :, :2].reshape(1, 4, 4) * math.sqrt(2)
    x_t_same = x_t.view(1, 4, 2, 4)[:, :, :, :2].reshape(1, 4, 4) * math.sqrt(2)
    assert L.relation_kl(x_s, x_t_same, mask, 2).item() == pytest.approx(0.0, abs=1e-6)
    assert L.relation_kl(torch.randn(1, 4, 4), x_t, mask, 2).item() > 0
    # whatever sits in the padded position changes nothing
    other = x_t.clone()
    other[0, 3] = 50.0
    y = torch.randn(1, 4, 4)
    assert L.relation_kl(y, other, mask, 2).item() == pytest.approx(
        L.relation_kl(y, x_t, mask, 2).item()
    )


def test_loss_table_names_the_functions() -> None:
    assert L.LOSSES["attention_mse"] is L.attention_mse
    assert set(L.LOSSES) >= {"hidden_mse", "soft_ce", "hard_ce", "regression_mse", "relation_kl"}
