# SPDX-License-Identifier: Apache-2.0
"""The TPOT controller's decision rule (lynx_ops/controller.py) against its stated behaviour:
one rung per `patience` steps over the target, back one rung per `patience` steps under
target * (1 - margin), no move inside the band, never below the batch's accuracy floor, bad
settings refused naming the field."""

from __future__ import annotations

import math

import pytest

from lynx_ops.controller import ControllerConfig, ControllerError, TpotController

LADDER = (128, 96, 64, 48, 32)


def _config(**kw):
    base = dict(target_ms=10.0, ladder=LADDER, margin=0.1, patience=4, smoothing=1.0)
    return ControllerConfig(**{**base, **kw})


def _feed(ctl, steps):
    return [ctl.update(batch, ms) for batch, ms in steps]


def test_over_target_moves_one_rung_per_patience_steps_down_to_the_ladder_end():
    ctl = TpotController(_config())
    ks = _feed(ctl, [(32, 12.0)] * 24)
    # rung i is reached after 4 * i steps over the target, then it stays at the last rung
    want = [LADDER[min(i // 4, len(LADDER) - 1)] for i in range(1, 25)]
    assert ks == want


def test_under_the_band_relaxes_back_to_the_top():
    ctl = TpotController(_config())
    _feed(ctl, [(32, 12.0)] * 16)
    assert ctl.budget == 32
    ks = _feed(ctl, [(32, 8.0)] * 16)  # 8 < 10 * 0.9
    assert ks[3] == 48 and ks[7] == 64 and ks[-1] == 128


def test_inside_the_band_it_holds():
    ctl = TpotController(_config())
    _feed(ctl, [(32, 12.0)] * 8)
    assert ctl.budget == 64
    ks = _feed(ctl, [(32, ms) for ms in (9.5, 9.1, 10.0, 9.9) * 10])  # within [9, 10]
    assert set(ks) == {64}


def test_alternating_around_the_target_never_moves():
    """One step over, one under: no run of `patience` on either side."""
    ctl = TpotController(_config())
    ks = _feed(ctl, [(32, 12.0), (32, 8.0)] * 20)
    assert set(ks) == {128}


def test_the_moving_average_delays_the_reaction():
    """smoothing 0.25: a jump from 5 to 15 ms crosses 10 ms in the average after 3 steps, so
    the first move comes patience steps after that, not patience steps after the jump."""
    ctl = TpotController(_config(smoothing=0.25))
    _feed(ctl, [(32, 5.0)] * 10)
    ks = _feed(ctl, [(32, 15.0)] * 8)
    avg = 5.0
    over = 0
    first_move = None
    for i in range(8):
        avg += 0.25 * (15.0 - avg)
        over = over + 1 if avg > 10.0 else 0
        if over == 4 and first_move is None:
            first_move = i
    assert first_move is not None
    assert ks[:first_move] == [128] * first_move and ks[first_move] == 96


def test_never_below_the_batch_floor_and_a_higher_floor_pulls_back_at_once():
    floors = ((8, 96), (32, 48))  # batch <= 8: K >= 96; <= 32: K >= 48; larger: K >= 48
    ctl = TpotController(_config(floors=floors))
    ks = _feed(ctl, [(32, 50.0)] * 40)
    assert min(ks) == 48 and ks[-1] == 48
    assert ctl.update(8, 50.0) == 96  # the small batch's floor applies in the same step
    ks = _feed(ctl, [(4, 50.0)] * 20)
    assert set(ks) == {96}
    ks = _feed(ctl, [(64, 50.0)] * 20)  # above the last bucket: the last floor
    assert min(ks) == 48
    for batch, k in [(1, 96), (8, 96), (9, 48), (500, 48)]:
        assert LADDER[ctl.deepest_rung(batch)] == k


def test_bad_measurements_are_skipped():
    ctl = TpotController(_config())
    _feed(ctl, [(32, 12.0)] * 3)
    for bad in (math.nan, math.inf, -1.0, None):
        assert ctl.update(32, bad) == 128
    assert ctl.average_ms == 12.0
    assert ctl.update(32, 12.0) == 96  # the fourth real step over the target


def test_snapshot_counts_steps_at_each_setting():
    ctl = TpotController(_config())
    _feed(ctl, [(32, 12.0)] * 6)
    snap = ctl.snapshot()
    assert snap["budget"] == 96 and snap["target_ms"] == 10.0
    assert snap["steps_at"] == {128: 3, 96: 3, 64: 0, 48: 0, 32: 0}


def test_same_sequence_same_decisions():
    """Two instances fed one sequence decide identically: what lets a single decision serve all
    ranks (there is no clock or randomness inside)."""
    seq = [(b, 6.0 + (i * 7919 % 13)) for i, b in enumerate([8, 16, 32, 64] * 30)]
    a, b = TpotController(_config(floors=((16, 64),))), TpotController(_config(floors=((16, 64),)))
    decisions = _feed(a, seq)
    assert decisions == _feed(b, seq)
    assert len(set(decisions)) > 1  # the sequence does move K


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(target_ms=0), "target_ms"),
        (dict(target_ms=math.nan), "target_ms"),
        (dict(target_ms=math.inf), "target_ms"),
        (dict(ladder=()), "ladder"),
        (dict(ladder=(32, 64)), "ladder"),
        (dict(ladder=(64, 64)), "ladder"),
        (dict(ladder=(64, 0)), "ladder"),
        (dict(ladder=(64.0, 32)), "ladder"),
        (dict(floors=((32, 48), (8, 96))), "floors"),
        (dict(floors=((8, 256),)), "floors"),
        (dict(floors=((0, 32),)), "floors"),
        (dict(margin=1.0), "margin"),
        (dict(margin=-0.1), "margin"),
        (dict(patience=0), "patience"),
        (dict(smoothing=0), "smoothing"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(kw, field):
    with pytest.raises(ControllerError, match=field):
        _config(**kw)


def test_from_dict():
    cfg = ControllerConfig.from_dict(
        {"target_ms": 15, "ladder": [128, 64, 32], "floors": [[8, 64], [64, 32]]}
    )
    assert cfg.ladder == (128, 64, 32) and cfg.floors == ((8, 64), (64, 32))
    with pytest.raises(ControllerError, match="unknown field"):
        ControllerConfig.from_dict({"target_ms": 15, "ladder": [64], "target": 3})
    with pytest.raises(ControllerError, match="required"):
        ControllerConfig.from_dict({"ladder": [64]})
    with pytest.raises(ControllerError, match="each entry"):
        ControllerConfig.from_dict({"target_ms": 15, "ladder": [64], "floors": [[8, 32, 1]]})
    with pytest.raises(ControllerError, match="ladder"):
        ControllerConfig.from_dict({"target_ms": 15, "ladder": 64})
