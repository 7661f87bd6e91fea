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


def test_an_alpha_sweep_equals_one_call_per_alpha(trio):
    """A list of alphas scores every alpha from one set of forward passes: row i equals the
    single-alpha call; an empty sweep is refused."""
    from slmkit.collab.proxy import proxy_logprobs

    ids, start = [5, 6, 7, 8, 40, 41, 42, 43, 44], 3
    alphas = [0.0, 0.5, 1.0, 2.5]
    got = proxy_logprobs(*trio, ids, start, alpha=alphas)
    assert got.shape == (len(alphas), len(ids) - start)
    for row, a in zip(got, alphas):
        assert torch.allclose(row, proxy_logprobs(*trio, ids, start, alpha=a), atol=1e-6)
    assert not torch.allclose(got[0], got[-1])
    with pytest.raises(SlmkitError, match="sweep is empty"):
        proxy_logprobs(*trio, ids, start, alpha=[])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_batched_proxy_decodes_each_prompt_as_it_would_alone(tiny_tok, arch):
    """Prompts of different lengths (left padding) in one batch give each prompt's own output."""
    from slmkit.collab.proxy import proxy_generate_batch

    trio = [LocalLM(tiny_model(arch, seed=s), tiny_tok, n) for s, n in ((0, "b"), (1, "e"), (2, "a"))]
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    outs, stats = proxy_generate_batch(*trio, prompts, 10, alpha=2.0)
    assert [len(o) for o in outs] == [10, 10, 10] and stats.new_tokens == 30
    for p, got in zip(prompts, outs):
        session_out = []
        sessions = [lm.session() for lm in trio]
        z = [s.extend(p)[-1] for s in sessions]
        for _ in range(10):
            t = int((z[0] + 2.0 * (z[1] - z[2])).argmax())
            session_out.append(t)
            z = [s.extend([t])[-1] for s in sessions]
        assert got == session_out, f"prompt {p}"
    # a row that reaches EOS stops there while the others go on
    eos = outs[1][3]
    stopped, _ = proxy_generate_batch(*trio, prompts, 10, alpha=2.0, eos_token_id=eos)
    for full, got in zip(outs, stopped):
        want = full[: full.index(eos) + 1] if eos in full else full
        assert got == want
    assert len(stopped[1]) <= 4
    with pytest.raises(SlmkitError, match="empty prompt"):
        proxy_generate_batch(*trio, [[5], []], 3)
