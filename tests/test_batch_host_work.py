"""The host work of a batch of live twins, done once per batch instead of once per twin, gives
what the per-twin calls give: `join_many` (histories and plans joined and stacked in NumPy)
equals `Regimen.__add__` and `pkpd.stack` field by field, `addl_offset` included (the doses of
`Drug.regimen` carry one); `output_keys_many` equals `output_keys`, key by key."""

from __future__ import annotations

import jax
import numpy as np

import pkpd
import twins
from twins._recommend import join_many
from twins.io._service_twin import output_keys, output_keys_many

jax.config.update("jax_enable_x64", True)

DRUG = twins.drugs.get("vancomycin_goti2018")
FIELDS = ("time", "amount", "cmt", "rate", "duration", "lag", "bioav", "evid", "ss", "ii")
FLAGS = ("ss_intervals", "has_ss", "has_reset", "has_infusion")


def _same(got: pkpd.Regimen, ref: pkpd.Regimen) -> None:
    assert got.n_events == ref.n_events
    for f in (*FIELDS, "order", "mask"):
        a, b = np.asarray(getattr(got, f)), np.asarray(getattr(ref, f))
        np.testing.assert_array_equal(a, b, err_msg=f)
        assert a.dtype == b.dtype, f
    if ref.addl_offset is None:
        assert got.addl_offset is None
    else:
        a, b = np.asarray(got.addl_offset), np.asarray(ref.addl_offset)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert [getattr(got, f) for f in FLAGS] == [getattr(ref, f) for f in FLAGS]


def test_join_many_with_offsets_is_concatenate_and_stack():
    """Plans of `Drug.regimen` (with `addl_offset`) after histories without, a row with
    offsets in both parts, a row with none, a row of one part: the host join is `pkpd`'s."""
    inf = pkpd.infusion(1000.0, duration=1.0, time=0.0) + pkpd.infusion(750.0, rate=500.0, time=12)
    plan = DRUG.regimen(3, amount=1.0, interval=12.0, start=36.0)
    assert plan.addl_offset is not None  # the case the service meets on every batch
    given = DRUG.regimen(2, amount=750.0, interval=12.0)
    oral = pkpd.oral(5.0, time=24.0).pad(4)
    firsts = [inf.pad(8), given.pad(8), inf.pad(8), oral]
    seconds = [plan.pad(8), plan.pad(8), oral, None]
    joined, stacked = join_many(firsts, seconds, 32)
    expect = [a if b is None else a + b for a, b in zip(firsts, seconds, strict=True)]
    for got, ref in zip(joined, expect, strict=True):
        _same(got, ref)
    _same(stacked, pkpd.stack(expect, 32))
    assert np.asarray(stacked.addl_offset)[0, 8:11].tolist() == [0, 1, 2]  # the plan's, kept


def test_join_many_without_offsets_has_none():
    """No part with offsets: none in the joined regimens or the stack, as in `pkpd`."""
    a = pkpd.infusion(1000.0, duration=1.0, time=0.0).pad(4)
    b = pkpd.infusion(500.0, duration=1.0, time=12.0).pad(4)
    joined, stacked = join_many([a, a], [b, None])
    _same(joined[0], a + b)
    _same(stacked, pkpd.stack([a + b, a]))
    assert stacked.addl_offset is None


def test_output_keys_many_are_output_keys():
    """The same recommendation and forecast keys as one twin at a time, bit for bit, for a
    seed above 2**32 and message numbers above 2**31, at a batch size between buckets."""
    for seed in (0, 2**40 + 3):
        asofs = [1, 5, 2**31 + 7, 123_456_789, 3, 9, 11, 12, 40]
        many = output_keys_many(seed, asofs)
        assert len(many) == len(asofs)
        for asof, keys in zip(asofs, many, strict=True):
            for got, ref in zip(keys, output_keys(seed, asof), strict=True):
                np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(ref))
    assert output_keys_many(0, []) == []
