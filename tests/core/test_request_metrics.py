"""RequestMetrics: TTFT, TPOT (mean/p50/p95), acceptance, per-position acceptance."""

from __future__ import annotations

import numpy as np
import pytest

from wanspec.core.actions import Site
from wanspec.core.metrics import RequestMetrics, percentile


@pytest.mark.parametrize("values", [[1.0], [3.0, 1.0], [0.5, 0.25, 4.0, 1.0, 2.0],
                                    [float(i) ** 1.5 for i in range(17)]])
@pytest.mark.parametrize("q", [0, 5, 50, 95, 100])
def test_percentile_matches_numpy_linear(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_of_nothing_is_zero():
    assert percentile([], 50) == 0.0


def test_timing_metrics_with_grouped_commits():
    m = RequestMetrics()
    m.on_start(10.0)
    m.on_commit(1, 11.0)  # first token: TTFT 1.0, no gap
    m.on_commit(3, 12.5)  # three tokens share 1.5 s: gaps 0.5 x 3
    m.on_commit(0, 13.0)  # nothing committed: ignored
    m.on_commit(2, 14.5)  # two tokens share 2.0 s: gaps 1.0 x 2
    m.on_commit(1, 14.75)
    m.on_finish(15.0)
    assert m.ttft == 1.0
    assert m.wall_time == 5.0
    assert m.committed_tokens == 7
    assert m.token_gaps == [0.5, 0.5, 0.5, 1.0, 1.0, 0.25]
    d = m.to_dict()
    assert d["ttft_s"] == 1.0
    assert d["tpot_s_mean"] == 0.625
    assert d["tpot_s_p50"] == 0.5
    assert d["tpot_s_p95"] == 1.0
    assert d["wall_s"] == 5.0


def test_first_commit_of_several_tokens_has_zero_gaps():
    m = RequestMetrics()
    m.on_start(0.0)
    m.on_commit(3, 2.0)
    assert m.ttft == 2.0
    assert m.token_gaps == [0.0, 0.0]


def test_defaults_before_anything_happens():
    m = RequestMetrics()
    assert (m.ttft, m.wall_time, m.tpot_mean, m.acceptance_rate, m.mean_acceptance_length) == (
        0.0, 0.0, 0.0, 0.0, 0.0)
    d = m.to_dict()
    assert d["per_position_acceptance"] == []
    assert d["busy_site_draft_passes_per_token"] == 0.0


def test_acceptance_counters_and_per_position():
    m = RequestMetrics()
    m.on_verify(window=4, accepted=4, committed=5)
    m.on_verify(window=4, accepted=1, committed=2)
    m.on_verify(window=2, accepted=0, committed=1)
    assert m.verify_rounds == 3
    assert m.drafted_tokens == 10 and m.accepted_tokens == 5
    assert m.acceptance_rate == 0.5
    assert m.mean_acceptance_length == 8 / 3
    assert m.position_attempts == [3, 3, 2, 2]
    assert m.position_accepts == [2, 1, 1, 1]
    assert m.to_dict()["per_position_acceptance"] == [2 / 3, 1 / 3, 0.5, 0.5]


def test_pass_counters():
    m = RequestMetrics()
    for _ in range(3):
        m.on_target_pass()
    m.on_draft_pass(Site.CONTROLLER)
    m.on_draft_pass(Site.CONTROLLER)
    m.on_draft_pass(Site.WORKER)
    m.on_commit(4, 1.0)
    d = m.to_dict()
    assert d["target_passes"] == 3
    assert d["draft_passes"] == {"controller": 2, "worker": 1}
    assert d["busy_site_draft_passes_per_token"] == 0.5
