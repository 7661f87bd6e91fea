"""Speculative decoding on tiny models: greedy output equals the target's, sampled output follows
the target's distribution (chi-square), caches roll back, drafters behave; the rejection rule
itself on hand-made target and draft distributions far apart."""

import pytest
import torch

from slmkit.collab import LocalLM, ModelDrafter, PromptLookupDrafter, speculative_generate
from slmkit.collab.speculative import _verify
from slmkit.errors import SlmkitError
from slmkit.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Token-by-token decoding and thousands of verifications on tiny rows: on a shared 2-core
    machine a second intra-op thread mostly waits for the other core (a 2-row softmax took ~8 ms
    instead of ~30 us; this file took 5 minutes instead of 40 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


# ---- the rejection rule on hand-made distributions (no models) ---------------------------------
P = torch.tensor([0.50, 0.30, 0.10, 0.07, 0.03])   # the target's next-token distribution
Q = torch.tensor([0.05, 0.10, 0.15, 0.30, 0.40])   # a draft far from it: sum min(P, Q) = 0.35
P_NEXT = torch.tensor([0.10, 0.05, 0.15, 0.40, 0.30])  # the target's distribution one token later


def verify_many(q: torch.Tensor | None, n: int, temperature: float, seed: int):
    """n single-draft rounds: the draft is drawn from q (or fixed at token 0 when q is None, a
    deterministic drafter) -> (accepted count, counts of the first emitted token [vocab], counts of
    the bonus token after an accepted draft [vocab])."""
    gen = torch.Generator().manual_seed(seed)
    # p_logits are logits at `temperature`: softmax(p_logits / temperature) = P, P_NEXT
    p_logits = torch.stack([P.log(), P_NEXT.log()]) * temperature
    drafts = torch.multinomial(q, n, replacement=True, generator=gen).tolist() if q is not None else [0] * n
    first, bonus, accepted = torch.zeros(len(P)), torch.zeros(len(P)), 0
    for d in drafts:
        n_ok, token = _verify(p_logits, [d], None if q is None else q[None], temperature, gen)
        assert n_ok in (0, 1)
        accepted += n_ok
        first[d if n_ok else token] += 1
        if n_ok:
            bonus[token] += 1
    return accepted, first, bonus


def assert_follows(counts: torch.Tensor, probs: torch.Tensor, what: str):
    from scipy.stats import chisquare

    pvalue = chisquare(counts.numpy(), (probs * counts.sum()).numpy()).pvalue
    freq = [round(v, 3) for v in (counts / counts.sum()).tolist()]
    want = [round(v, 3) for v in probs.tolist()]
    assert pvalue > 1e-4, f"{what}: frequencies {freq} vs {want} (chi-square p = {pvalue:.1e})"


def assert_rate(accepted: int, n: int, expect: float, what: str):
    sigma = (expect * (1 - expect) / n) ** 0.5
    assert abs(accepted / n - expect) < 4.5 * sigma, \
        f"{what}: acceptance {accepted / n:.4f}, expected {expect:.4f} +- {4.5 * sigma:.4f}"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_verify_emits_the_target_distribution_from_a_distant_draft(temperature):
    """Leviathan et al.: keeping d with probability min(1, p(d)/q(d)) and otherwise drawing from
    norm(max(0, p - q)) emits exactly p, and accepts with probability sum_x min(p(x), q(x)).
    p and q are far apart, so an inverted ratio (q/p accepts 0.89 of drafts here) or a resample
    from p instead of the residual (emits 0.375 for token 0 instead of 0.5) is far outside the
    sampling noise of 6000 rounds."""
    n = 6000
    accepted, first, bonus = verify_many(Q, n, temperature, seed=1)
    assert_rate(accepted, n, float(torch.minimum(P, Q).sum()), "draft from Q")
    assert_follows(first, P, "first emitted token")
    assert_follows(bonus, P_NEXT, "token after an accepted draft")


def test_verify_with_a_deterministic_draft_keeps_it_with_the_target_probability():
    """A one-hot q (prompt lookup) on token 0: kept with probability p(0), and a rejection draws
    from p without token 0; the emitted token still follows p."""
    n = 4000
    accepted, first, _ = verify_many(None, n, 1.0, seed=2)
    assert_rate(accepted, n, float(P[0]), "one-hot draft of token 0")
    assert_follows(first, P, "first emitted token")


def test_the_engine_decodes_a_sequence_alone_by_speculative_rounds_and_joins_the_batch_after(pair, tiny_tok):
    """Engine(speculator=...): a sequence running alone takes several tokens per target forward,
    a second arriving makes both decode in the batch, and every greedy token is the target's own."""
    from slmkit.collab.speculative import Speculator
    from slmkit.generate import Engine, Sampling

    target, draft = pair
    g = torch.Generator().manual_seed(5)
    first, second = (torch.randint(3, 500, (n,), generator=g).tolist() for n in (12, 7))
    greedy = Sampling(max_new_tokens=30, temperature=0, ignore_eos=True)
    want = [greedy_reference(target, p, 30) for p in (first, second)]
    speculator = Speculator(ModelDrafter(draft), k=3)
    engine = Engine(target.model, tiny_tok, speculator=speculator)
    a = engine.add(first, greedy)
    steps = 0
    while len(engine._running) == 0 or len(engine._running[0].done.token_ids) < 10:
        engine.step()
        steps += 1
    assert steps < 10 and speculator.stats.accepted > 0        # alone: more than a token per step
    b = engine.add(second, greedy)
    rounds = speculator.stats.rounds
    engine.run()
    assert speculator.stats.rounds > rounds                     # alone again once `second` finished
    assert [engine.result(a).token_ids, engine.result(b).token_ids] == want
    sampled = Engine(target.model, tiny_tok, speculator=Speculator(ModelDrafter(draft)))
    ids = [sampled.add(first, Sampling(max_new_tokens=12, temperature=0.8, seed=1, ignore_eos=True))]
    sampled.run()
    assert len(sampled.result(ids[0]).token_ids) == 12
