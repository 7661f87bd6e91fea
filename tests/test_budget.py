"""The shrink budget parser and its errors."""

from __future__ import annotations

import pytest

from slmkit.errors import SlmkitError
from slmkit.recipes.budget import Budget, parse_budget


def test_each_limit_and_their_combination_parse():
    assert parse_budget("size=0.35x") == Budget(size=0.35)
    assert parse_budget("decode=2X") == Budget(decode=2.0)
    assert parse_budget("ppl-rise=5%") == Budget(ppl_rise=0.05)
    both = parse_budget(" size=0.4x , ppl-rise=8% ")
    assert both == Budget(size=0.4, ppl_rise=0.08) and str(both) == "size=0.4x,ppl-rise=8%"
    assert parse_budget(str(both)) == both


def test_a_candidate_meets_the_budget_only_within_every_limit():
    b = parse_budget("size=0.4x,decode=1.5x,ppl-rise=5%")
    assert b.meets(0.39, 1.6, 0.04)
    assert not b.meets(0.41, 1.6, 0.04)
    assert not b.meets(0.39, 1.4, 0.04)
    assert not b.meets(0.39, 1.6, 0.06)
    assert not b.meets(0.39, None, 0.04)          # an unmeasured speed cannot meet a speed limit
    assert parse_budget("size=0.4x").meets(0.39, None, None)


@pytest.mark.parametrize("text, match", [
    ("", "empty budget"),
    ("size", "expected one of size=, decode=, ppl-rise="),
    ("speed=2x", "expected one of"),
    ("size=0.35", "with its unit, e.g. size=0.35x"),
    ("ppl-rise=0.05", "with its unit, e.g. ppl-rise=5%"),
    ("size=abcx", "not a number"),
    ("decode=-2x", "positive"),
    ("size=1.5x", "below 1x"),
    ("size=0.3x,size=0.4x", "size twice"),
    ("decode=nanx", "positive"),
])
def test_bad_budgets_say_what_to_write(text, match):
    with pytest.raises(SlmkitError, match=match):
        parse_budget(text)


def test_the_pareto_front_and_the_choice_on_constructed_candidates():
    from slmkit.recipes.budget import Candidate, choose, pareto_front

    a = Candidate("q8", 0.53, 1.4, 0.002)
    b = Candidate("q5", 0.39, 1.5, 0.03)
    c = Candidate("q5-worse", 0.39, 1.5, 0.04)        # dominated by b
    d = Candidate("q4", 0.34, 2.0, 0.09)
    e = Candidate("slow-q4", 0.34, 1.0, 0.10)         # dominated by d
    f = Candidate("pruned", 0.30, 2.2, 0.30)
    front = pareto_front([a, b, c, d, e, f])
    assert front == [a, b, d, f]
    assert choose([a, b, c, d, e, f], parse_budget("size=0.4x")) is b          # best quality that fits
    assert choose([a, b, c, d, e, f], parse_budget("size=0.35x")) is d
    assert choose([a, b, c, d, e, f], parse_budget("ppl-rise=5%")) is b         # smallest within 5%
    assert choose([a, b, c, d, e, f], parse_budget("decode=1.8x")) is d
    assert choose([a, b, c, d, e, f], parse_budget("size=0.35x,ppl-rise=5%")) is None
    tie = Candidate("q5-faster", 0.39, 1.9, 0.03)
    assert choose([b, tie], parse_budget("ppl-rise=5%")) is tie                  # b is dominated by it
