"""Figure builders: one trace per figure (never per head), values and marks checked directly,
and every figure accepted by plotly's own validator."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from app.dashboard import charts as C
from app.dashboard import figures as F


@pytest.fixture
def matrix() -> np.ndarray:
    m = np.arange(1.0, 13.0).reshape(3, 4) / 10
    m[1, 2] = np.nan
    m[0, 0] = 0.0
    return m


def _valid(fig: dict) -> dict:
    go.Figure(fig)  # raises ValueError on any property plotly does not know
    return fig


def _z(fig: dict) -> np.ndarray:
    return np.array(fig["data"][0]["z"], dtype=float)


def test_heatmap_is_one_trace_with_the_matrix(matrix):
    fig = _valid(F.heatmap_figure(matrix, "fisher"))
    assert len(fig["data"]) == 1 and fig["data"][0]["type"] == "heatmap"
    np.testing.assert_array_equal(_z(fig), matrix)
    assert fig["data"][0]["z"][1][2] is None
    assert fig["layout"]["yaxis"]["autorange"] == "reversed" and "fisher" in fig["layout"]["title"]["text"]


def test_heatmap_log_colours_hover_raw(matrix):
    fig = _valid(F.heatmap_figure(matrix, "attn_kl", log=True))
    z, raw = fig["data"][0]["z"], fig["data"][0]["customdata"]
    assert z[0][0] is None  # log of zero is not drawn
    assert z[2][1] == pytest.approx(math.log10(matrix[2, 1])) and raw[2][1][0] == pytest.approx(matrix[2, 1])
    assert fig["data"][0]["colorbar"]["title"]["text"] == "log10(nats)"


def test_heatmap_units_ticks_hover_and_shared_range(matrix):
    fig = _valid(F.heatmap_figure(matrix, "fisher", hover={"attn_kl": 2 * matrix, "key_mse": 3 * matrix},
                                  zrange=(0.0, 5.0)))
    trace, layout = fig["data"][0], fig["layout"]
    assert trace["colorbar"]["title"]["text"] == "nats" and (trace["zmin"], trace["zmax"]) == (0.0, 5.0)
    assert trace["customdata"][2][3] == pytest.approx([matrix[2, 3], 2 * matrix[2, 3], 3 * matrix[2, 3]])
    assert "attn_kl = %{customdata[1]" in trace["hovertemplate"] and "key_mse" in trace["hovertemplate"]
    assert all(layout[a]["dtick"] == 1 and layout[a]["tick0"] == 0 for a in ("xaxis", "yaxis"))
    assert "zmin" not in F.heatmap_figure(matrix, "fisher")["data"][0]


def test_heatmap_rejects_non_matrix():
    with pytest.raises(ValueError, match="matrix"):
        F.heatmap_figure(np.zeros(5), "fisher")


def test_selection_outline_marks_the_cell(matrix):
    (shape,) = F.heatmap_figure(matrix, "fisher", selected=(2, 1))["layout"]["shapes"]
    assert (shape["x0"], shape["x1"], shape["y0"], shape["y1"]) == (0.5, 1.5, 1.5, 2.5)
    assert F.selection_shapes(None) == []
    assert F.heatmap_figure(matrix, "fisher", selected=(99, 1))["layout"]["shapes"] == []  # 3 layers
    assert F.selection_shapes((1, 4), (3, 4)) == [] and len(F.selection_shapes((2, 3), (3, 4))) == 1


def test_difference_is_b_minus_a(matrix):
    b = matrix * 3
    fig = _valid(F.difference_figure(matrix, b, "key_mse"))
    np.testing.assert_allclose(_z(fig), b - matrix, equal_nan=True)
    assert fig["data"][0]["zmid"] == 0 and fig["data"][0]["zmax"] == pytest.approx(
        np.nanmax(np.abs(b - matrix))
    )
    assert _z(F.difference_figure(matrix, b, "key_mse", log=True))[2, 2] == pytest.approx(math.log10(3))
    with pytest.raises(ValueError, match="shape"):
        F.difference_figure(matrix, matrix[:2], "key_mse")


def test_detail_figures():
    a2 = _valid(F.a2_figure([0.5, 0.25, 0.125], "A²"))
    assert a2["data"][0]["y"] == [0.5, 0.25, 0.125] and a2["layout"]["yaxis"]["type"] == "log"
    assert a2["data"][1]["y"] == pytest.approx([0.5 / 0.875, 0.75 / 0.875, 1.0])  # cumulative, ranked
    assert a2["layout"]["shapes"] == []  # no policy, nothing kept
    spec = _valid(F.spectrum_figure([4.0, 2.0, 1.0, 0.5], 2, "spectrum"))
    assert spec["data"][0]["x"] == [1, 2, 3, 4]
    (line,) = spec["layout"]["shapes"]
    assert line["x0"] == 2.5 and spec["layout"]["annotations"][0]["text"] == "rank 2"
    assert _valid(F.spectrum_figure([1.0], None, "s"))["layout"]["shapes"] == []
    across = {"k2": {"fisher": 0.1, "attn_kl": 0.2}, "k2-headq": {"fisher": 0.01, "attn_kl": 0.02}}
    runs = _valid(F.head_runs_figure(across, ["fisher", "attn_kl"], "t"))
    assert [t["name"] for t in runs["data"]] == ["fisher", "attn_kl"]
    assert runs["data"][1]["y"] == ["k2", "k2-headq"] and runs["data"][1]["x"] == [0.2, 0.02]
    assert [t["xaxis"] for t in runs["data"]] == ["x", "x2"]  # one panel per metric
    assert runs["layout"]["xaxis2"]["title"]["text"] == "attn_kl (nats)"
    assert "type" not in runs["layout"]["yaxis"] and runs["layout"]["yaxis"]["automargin"] is True


def test_a2_figure_without_a_stored_keep_mask_marks_the_top_weights():
    """Documents from before the keep rates were stored: the policy's share of top-A² positions."""
    weights = [0.1, 0.9, 0.3, 0.05, 0.6, 0.2, 0.02, 0.01, 0.4, 0.03]
    fig = _valid(F.a2_figure(weights, "A²", fraction=0.2))
    kept = fig["data"][1]
    assert kept["name"].startswith("top A²") and kept["x"] == [1, 4] and kept["y"] == [0.9, 0.6]
    (shade,) = fig["layout"]["shapes"]
    assert shade["x1"] == pytest.approx(0.2)
    assert fig["layout"]["annotations"][0]["text"] == f"top 20% of tokens: {1.5 / sum(weights):.0%} of A²"


def test_a2_figure_marks_the_tokens_the_policy_kept():
    """The stored keep rates: positions kept in at least half of the windows are marked (here not the
    top-A² ones: an online policy decides before it has seen the later queries), with the measured
    share of tokens kept and of the A² they hold."""
    weights = [0.1, 0.9, 0.3, 0.05, 0.6, 0.2, 0.02, 0.01, 0.4, 0.03]
    rate = [1.0, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.75]
    fig = _valid(F.a2_figure(weights, "A²", fraction=0.2, keep_rate=rate))
    kept = fig["data"][1]
    assert kept["name"].startswith("kept by the policy") and kept["x"] == [0, 1, 9]
    assert kept["y"] == [0.1, 0.9, 0.03] and kept["customdata"] == [1.0, 0.5, 0.75]
    (shade,) = fig["layout"]["shapes"]
    assert shade["x1"] == pytest.approx(0.25)  # 2.5 of 10 tokens kept on average
    share = (0.1 + 0.45 + 0.075 + 0.0225) / sum(weights)
    assert fig["layout"]["annotations"][0]["text"] == f"kept 25% of tokens (measured): {share:.0%} of A²"


def test_empty_figure_wraps_a_long_message():
    text = F.empty_figure("value A² distortion (value_a2): values are not quantized in k2")
    lines = text["layout"]["annotations"][0]["text"].split("<br>")
    assert len(lines) > 1 and max(map(len, lines)) <= 40


def test_predictor_and_perplexity_figures():
    fig = _valid(
        C.predictor_figure(np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array(["a", "b"]), "fisher", 0.5)
    )
    assert len(fig["data"]) == 1 and fig["data"][0]["y"] == [3.0, 4.0]
    assert fig["layout"]["xaxis"]["type"] == "log" and "0.500" in fig["layout"]["title"]["text"]
    none = C.predictor_figure(np.array([]), np.array([]), np.array([]), "key_mse", None)
    assert "n/a" in none["layout"]["title"]["text"]
    rows = [
        {"run": "dense", "perplexity": 20.0, "key_bits": 16.0, "value_bits": 16.0},
        {"run": "k2h", "perplexity": 20.6, "excess": 0.6, "excess_removed": 0.9, "key_bits": 4.0},
    ]
    bars = _valid(C.perplexity_figure(rows))
    assert len(bars["data"]) == 1 and bars["data"][0]["y"] == [20.0, 20.6]
    assert bars["data"][0]["text"] == ["", "+0.60 (90% removed)"]
    assert bars["data"][0]["x"][1] == "k2h<br>K 4 / V – bits"
    assert _valid(F.empty_figure("nothing here"))["layout"]["annotations"][0]["text"] == "nothing here"


def test_pareto_front_keeps_points_below_every_cheaper_one():
    points = [(3.0, 5.0), (2.0, 9.0), (4.0, 5.0), (3.0, 4.0), (5.0, 1.0), (2.5, 9.5)]
    # by bits: 2.0 -> 9 (first), 2.5 -> 9.5 (worse), 3.0 -> 4 (the lower of the two at 3.0),
    # 4.0 -> 5 (worse than 4), 5.0 -> 1
    assert C.pareto_front(points) == [(2.0, 9.0), (3.0, 4.0), (5.0, 1.0)]
    assert C.pareto_front([]) == []


def test_budget_figure_one_trace_per_kind_and_the_frontier():
    rows = [
        {"run": "k2", "kind": "plain", "key_bits": 3.0, "excess": 6.0},
        {"run": "k3", "kind": "plain", "key_bits": 4.0, "excess": 1.0},
        {"run": "k2+hq8", "kind": "HeadQ", "key_bits": 3.5, "excess": 0.8},
        {"run": "kv2", "kind": "other", "key_bits": 3.0, "excess": 0.1},
        {"run": "broken", "kind": "plain", "key_bits": 2.0, "excess": None},
    ]
    fig = _valid(C.budget_figure(rows))
    names = [t["name"] for t in fig["data"]]
    assert names == ["plain", "HeadQ", "other", "Pareto frontier"]
    assert fig["data"][0]["text"] == ["k2", "k3"] and fig["data"][0]["y"] == [6.0, 1.0]
    assert "%{text}" in fig["data"][1]["hovertemplate"]
    front = fig["data"][3]
    assert front["x"] == [3.0, 3.5] and front["y"] == [6.0, 0.8]  # "other" is not on the frontier
    assert C.budget_figure([])["data"] == []


def test_error_bars_reach_the_intervals_and_vanish_without_them():
    rows = [
        {"run": "dense", "perplexity": 20.0, "perplexity_ci": [18.0, 22.5]},
        {"run": "k2", "perplexity": 26.0, "perplexity_ci": [23.0, 29.0], "excess": 6.0},
        {"run": "imported", "perplexity": 27.0, "perplexity_ci": None},
    ]
    (bars,) = _valid(C.perplexity_figure(rows))["data"]
    assert bars["error_y"]["symmetric"] is False
    assert bars["error_y"]["array"] == pytest.approx([2.5, 3.0, None])
    assert bars["error_y"]["arrayminus"] == pytest.approx([2.0, 3.0, None])
    old = [{k: v for k, v in r.items() if not k.endswith("_ci")} for r in rows]
    assert "error_y" not in C.perplexity_figure(old)["data"][0]
    assert C.error_bars([1.0], [[1.2, 1.5]])["arrayminus"] == [0.0]  # never a negative length
    assert C.error_bars([None], [[1.0, 2.0]]) is None


def test_budget_and_removed_figures_carry_their_intervals():
    budget = [{"run": "k2", "kind": "plain", "key_bits": 3.0, "excess": 6.0, "excess_ci": [5.0, 7.5]},
              {"run": "hq", "kind": "HeadQ", "key_bits": 4.0, "excess": 0.7}]
    plain, headq, _front = _valid(C.budget_figure(budget))["data"]
    assert plain["error_y"]["array"] == [1.5] and plain["error_y"]["arrayminus"] == [1.0]
    assert "error_y" not in headq
    rows = [{"run": "k2", "excess_removed": None},
            {"run": "hq", "excess_removed": 0.88, "excess_removed_ci": [0.86, 0.9]}]
    (removed,) = _valid(C.removed_figure(rows))["data"]
    assert removed["x"] == ["hq"] and removed["y"] == [0.88]
    assert removed["error_y"]["array"] == pytest.approx([0.02])
    assert removed["error_y"]["arrayminus"] == pytest.approx([0.02])
    assert C.removed_figure([{"run": "hq", "excess_removed": 0.5}])["data"][0].get("error_y") is None
    assert C.removed_figure(rows[:1])["data"] == []


def test_predictor_title_gives_the_interval():
    fig = C.predictor_figure(np.array([1.0]), np.array([2.0]), np.array(["a"]), "fisher", 0.83, (0.78, 0.871))
    assert "ρ = 0.830 [0.780, 0.871]" in fig["layout"]["title"]["text"]
