"""The learned router separates queries by what the small model's features carry; PGR math."""

import pytest
import torch

from slmkit.collab import LocalLM
from slmkit.collab.route import cascade
from slmkit.collab.router import query_features, train_router
from slmkit.collab.weak_to_strong import performance_gap_recovered, weak_labels
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model


def test_router_learns_a_feature_separable_label(tiny_tok):
    lm = LocalLM(tiny_model("llama", seed=0), tiny_tok)
    easy = [f"def f{i}(x): return x" for i in range(12)]
    hard = [f"Once upon a time there was a king number {i}." for i in range(12)]
    prompts = easy + hard
    labels = [True] * 12 + [False] * 12          # "the small model gets code right, prose wrong"
    feats = query_features(lm, prompts)
    order = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    train, test = order[:16], order[16:]
    router = train_router(feats[train], [labels[i] for i in train])
    pred = router.probability(feats[test]) > 0.5
    assert (pred == torch.tensor([labels[i] for i in test])).float().mean() >= 0.9
    # as a cascade confidence: prose goes to the large model, code stays
    res = cascade(lm, lm, [easy[0], hard[0]], 0.5, max_new_tokens=2, confidence=router.confidence)
    assert res.escalated == [False, True]
    with pytest.raises(SlmkitError, match="right and wrong"):
        train_router(feats[:4], [True] * 4)


def test_pgr_and_weak_labels(tiny_tok):
    assert performance_gap_recovered(0.4, 0.7, 0.8) == pytest.approx(0.75)
    with pytest.raises(SlmkitError, match="undefined"):
        performance_gap_recovered(0.5, 0.6, 0.5)
    lm = LocalLM(tiny_model("llama", seed=0), tiny_tok)
    recs = weak_labels(lm, ["a", "b"], 3)
    assert [r["prompt"] for r in recs] == ["a", "b"] and all(isinstance(r["response"], str) for r in recs)


def test_choice_confidence_is_the_winners_softmax_probability():
    import math

    from slmkit.collab.route import choice_confidence

    assert choice_confidence([-1.0, -1.0]) == pytest.approx(0.5)
    lls = [-3.0, -0.5, -2.0, -7.0]
    z = sum(math.exp(v) for v in lls)
    assert choice_confidence(lls) == pytest.approx(math.exp(-0.5) / z)
    assert choice_confidence([-1000.0, -1.0]) == pytest.approx(1.0)   # no overflow/underflow
    with pytest.raises(SlmkitError):
        choice_confidence([])
