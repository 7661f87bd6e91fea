"""Speculative decoding on tiny models: greedy output equals the target's, sampled output follows
the target's distribution (chi-square), caches roll back, drafters behave."""

import pytest
import torch

from slmkit.collab import LocalLM, ModelDrafter, PromptLookupDrafter, speculative_generate
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model, tiny_tokenizer


def greedy_reference(lm: LocalLM, prompt: list[int], n: int) -> list[int]:
    s, out = lm.session(), []
    logits = s.extend(prompt)[-1]
    for _ in range(n):
        t = int(logits.argmax())
        out.append(t)
        logits = s.extend([t])[-1]
    return out


@pytest.fixture(scope="module")
def pair(tiny_tok):
    # the draft is the target with noise on its weights: they agree often but not always
    target = tiny_model("llama", seed=0)
    draft = tiny_model("llama", seed=0)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * 0.002)
    return LocalLM(target, tiny_tok, "target"), LocalLM(draft, tiny_tok, "draft")


@pytest.mark.parametrize("k, adaptive", [(1, False), (3, False), (5, True)])
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_greedy_equals_target_only(k, adaptive, model_type, tiny_tok):
    target = LocalLM(tiny_model(model_type, seed=0), tiny_tok)
    draft_model = tiny_model(model_type, seed=0)
    with torch.no_grad():
        for p in draft_model.parameters():
            p.add_(torch.randn_like(p) * 0.002)
    prompt = torch.randint(3, 500, (12,), generator=torch.Generator().manual_seed(k)).tolist()
    ref = greedy_reference(target, prompt, 40)
    out, stats = speculative_generate(target, ModelDrafter(LocalLM(draft_model, tiny_tok)), prompt, 40,
                                      k=k, adaptive=adaptive)
    assert out == ref
    assert 0 < stats.accepted < stats.proposed            # some drafts kept, some rejected
    assert stats.target_forwards < 41                      # fewer target passes than tokens
    assert stats.new_tokens == 40


def test_draft_confidence_ends_proposals_early_and_stays_exact(pair):
    target, draft = pair
    prompt = torch.randint(3, 500, (10,), generator=torch.Generator().manual_seed(7)).tolist()
    # the draft's top probability at each position of its own greedy continuation
    s, tops, seq = draft.session(), [], list(prompt)
    logits = s.extend(seq)[-1]
    for _ in range(6):
        p = torch.softmax(logits.float(), -1)
        tops.append(float(p.max()))
        seq.append(int(p.argmax()))
        logits = s.extend([seq[-1]])[-1]
    threshold = sorted(tops)[2]                         # some positions above it, some below
    # the proposal ends with the first doubtful token (it is still proposed)
    expect = next((i + 1 for i in range(6) if tops[i] < threshold), 6)
    got, _ = ModelDrafter(draft, min_confidence=threshold).propose(prompt, 6, 0.0, None)
    assert got == seq[len(prompt):len(prompt) + expect] and 1 <= expect < 6
    assert len(ModelDrafter(draft, min_confidence=1.0).propose(prompt, 6, 0.0, None)[0]) == 1
    assert len(ModelDrafter(draft).propose(prompt, 6, 0.0, None)[0]) == 6
    # joint rule: ends after the token where the running product of top probabilities drops below
    joint = [float(torch.tensor(tops[:i + 1]).prod()) for i in range(6)]
    floor = (joint[2] + joint[3]) / 2
    got, _ = ModelDrafter(draft, min_joint_confidence=floor).propose(prompt, 6, 0.0, None)
    assert joint[2] > floor > joint[3] and got == seq[len(prompt):len(prompt) + 4]
    ref = greedy_reference(target, prompt, 30)
    for drafter in (ModelDrafter(draft, min_confidence=threshold), ModelDrafter(draft, min_joint_confidence=floor)):
        out, stats = speculative_generate(target, drafter, prompt, 30, k=6)
        assert out == ref and stats.proposed < 6 * stats.rounds
    with pytest.raises(SlmkitError, match="min_confidence"):
        ModelDrafter(draft, min_confidence=1.5)
    with pytest.raises(SlmkitError, match="min_joint_confidence"):
        ModelDrafter(draft, min_joint_confidence=-0.1)


def test_prompt_lookup_drafts_from_repeats_and_stays_exact(pair):
    target, _ = pair
    phrase = [11, 12, 13, 14, 15, 16]
    prompt = phrase * 3 + [11, 12]
    ref = greedy_reference(target, prompt, 20)
    out, stats = speculative_generate(target, PromptLookupDrafter(max_ngram=2), prompt, 20, k=4)
    assert out == ref
    assert PromptLookupDrafter(2).propose(prompt, 4, 0.0, None)[0] == [13, 14, 15, 16]
    assert PromptLookupDrafter(2).propose([1, 2, 3], 4, 0.0, None)[0] == []


def test_sampling_follows_the_target_distribution():
    """Chi-square of (t1, t2) drawn by speculative sampling against the target's exact joint."""
    from scipy.stats import chisquare

    vocab = 6
    target = tiny_model("llama", seed=3, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    draft = tiny_model("llama", seed=4, vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    tok = tiny_tokenizer()  # only its fingerprint is used: both sides share it
    t_lm, d_lm = LocalLM(target, tok), LocalLM(draft, tok)
    prompt, temp = [3, 4, 5], 1.5
    with torch.no_grad():
        p1 = torch.softmax(target(torch.tensor([prompt])).logits[0, -1] / temp, -1)
        joint = torch.stack([p1[a] * torch.softmax(target(torch.tensor([prompt + [a]])).logits[0, -1] / temp, -1)
                             for a in range(vocab)])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab, vocab)
    n = 3000
    accepted = 0
    for _ in range(n):
        out, stats = speculative_generate(t_lm, ModelDrafter(d_lm), prompt, 2, k=2, temperature=temp,
                                          adaptive=False, generator=gen)
        counts[out[0], out[1]] += 1
        accepted += stats.accepted
    expected = (joint * n).flatten()
    keep = expected >= 5
    obs = counts.flatten()[keep]
    exp = expected[keep] * obs.sum() / expected[keep].sum()
    assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3
    assert 0 < accepted < n   # the draft is a different model: some drafts are rejected


def test_different_tokenizers_are_refused(pair, tiny_tok):
    target, draft = pair
    other = LocalLM(draft.model, tiny_tokenizer(300))
    with pytest.raises(SlmkitError, match="different tokenizers"):
        speculative_generate(target, ModelDrafter(other), [5, 6], 4)
    with pytest.raises(SlmkitError):
        speculative_generate(target, ModelDrafter(draft), [], 4)


def test_eos_stops_generation(pair):
    target, draft = pair
    prompt = [7, 8, 9]
    ref = greedy_reference(target, prompt, 10)
    eos = ref[4]
    out, _ = speculative_generate(target, ModelDrafter(draft), prompt, 10, eos_token_id=eos)
    assert out == ref[: ref.index(eos) + 1]
