"""Proxy tuning on tiny models: alpha = 0 (or expert == anti-expert) is the base model exactly;
a real expert shifts the output; mixed tokenizers are refused."""

import pytest
import torch

from slmkit.collab import LocalLM
from slmkit.collab.proxy import proxy_generate
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model, tiny_tokenizer

from test_collab_speculative import greedy_reference


@pytest.fixture(scope="module")
def trio(tiny_tok):
    return (LocalLM(tiny_model("llama", seed=0), tiny_tok, "base"),
            LocalLM(tiny_model("llama", seed=1), tiny_tok, "expert"),
            LocalLM(tiny_model("llama", seed=2), tiny_tok, "anti"))


def test_alpha_zero_and_identical_experts_give_the_base(trio):
    base, expert, anti = trio
    prompt = [5, 6, 7, 8]
    ref = greedy_reference(base, prompt, 12)
    assert proxy_generate(base, expert, anti, prompt, 12, alpha=0.0)[0] == ref
    assert proxy_generate(base, expert, expert, prompt, 12, alpha=1.0)[0] == ref


def test_the_expert_difference_steers_the_output(trio):
    base, expert, anti = trio
    prompt = [5, 6, 7, 8]
    out, stats = proxy_generate(base, expert, anti, prompt, 12, alpha=5.0)
    assert out != greedy_reference(base, prompt, 12) and stats.mean_abs_shift > 0
    # the first token is the argmax of base + alpha (expert - anti), computed directly
    with torch.no_grad():
        z = [m.model(torch.tensor([prompt])).logits[0, -1] for m in trio]
    assert out[0] == int((z[0] + 5.0 * (z[1] - z[2])).argmax())


def test_mixed_tokenizers_are_refused(trio):
    base, expert, _ = trio
    other = LocalLM(expert.model, tiny_tokenizer(300), "other")
    with pytest.raises(SlmkitError, match="one tokenizer"):
        proxy_generate(base, expert, other, [5], 3)


def test_proxy_logprobs_match_the_step_by_step_proxy_distribution(trio):
    """Teacher-forced scoring in one pass equals the logits proxy_generate combines step by step;
    alpha=0 is the base model's own log-likelihood."""
    from slmkit.collab.proxy import proxy_logprobs

    base, expert, anti = trio
    ids, start = [5, 6, 7, 8, 40, 41, 42, 43, 44], 4
    got = proxy_logprobs(base, expert, anti, ids, start, alpha=0.7)
    sessions = [lm.session() for lm in trio]
    logits = [s.extend(ids[:start])[-1] for s in sessions]
    want = []
    for t in ids[start:]:
        z = logits[0] + 0.7 * (logits[1] - logits[2])
        want.append(float(torch.log_softmax(z.float(), -1)[t]))
        logits = [s.extend([t])[-1] for s in sessions]
    assert torch.allclose(got, torch.tensor(want), atol=1e-4)
    own = torch.log_softmax(base.session().extend(ids)[start - 1:-1].float(), -1)
    assert torch.allclose(proxy_logprobs(base, expert, anti, ids, start, alpha=0.0),
                          own.gather(1, torch.tensor(ids[start:])[:, None])[:, 0], atol=1e-5)
    with pytest.raises(SlmkitError, match="start must be"):
        proxy_logprobs(base, expert, anti, ids, len(ids))
