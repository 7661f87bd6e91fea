"""SFT rows (chat template, prompt masking, padding) and black-box teacher answers (resumable
JSONL cache, filters), with a tiny real model as the teacher."""

import json

import pytest
import torch

from slmkit.distill.blackbox import TeacherConfig, filter_answers, teacher_answers
from slmkit.errors import SlmkitError
from slmkit.generate.lm import LocalLM
from slmkit.models.tiny import tiny_model
from slmkit.train import IGNORE, Batches, CausalLM, TrainConfig, train
from slmkit.train.sft import sft_batches

EXAMPLES = [{"prompt": "What is two plus two?", "response": "Four."},
            {"prompt": "Name a colour.", "response": "Blue, like the sky."}]


def test_sft_rows_score_only_the_answer(tiny_tok):
    b = sft_batches(tiny_tok, EXAMPLES, 48)
    for i, ex in enumerate(EXAMPLES):
        scored = b.ids[i][b.labels[i] != IGNORE]
        text = tiny_tok.decode(scored)
        assert ex["response"] in text and ex["prompt"] not in text
        n = int(b.attention_mask[i].sum())
        assert (b.labels[i, n:] == IGNORE).all() and (b.ids[i, :n] != tiny_tok.pad_token_id).any()
    with pytest.raises(SlmkitError, match="prompt alone"):
        sft_batches(tiny_tok, EXAMPLES, 3)
    with pytest.raises(SlmkitError, match="no text under"):
        sft_batches(tiny_tok, [{"prompt": "x"}], 48)


def test_sft_training_fits_the_answers(tiny_tok, tmp_path):
    model = tiny_model("llama", seed=0)
    data = sft_batches(tiny_tok, EXAMPLES * 4, 48)
    loss0, _ = CausalLM().loss(model, data.batch(0, 8, 0))
    train(model, CausalLM(), data, TrainConfig(steps=20, batch_size=4, lr=3e-3), tmp_path)
    loss1, _ = CausalLM().loss(model, data.batch(0, 8, 0))
    assert loss1 < 0.5 * loss0


def test_teacher_answers_resume_from_a_torn_cache(tiny_tok, tmp_path):
    teacher = tiny_model("llama", seed=1)
    records = [{"question": f"Question number {i}?", "answer": str(i)} for i in range(5)]
    cfg = TeacherConfig(max_new_tokens=4, batch_size=2, chat="no")
    calls = []

    class Counting(LocalLM):
        def generate(self, prompts, max_new_tokens=128, temperature=0.0):
            calls.append(list(prompts))
            return super().generate(prompts, max_new_tokens, temperature)

    generate = Counting(teacher, tiny_tok, name="teacher", chat=cfg.chat)

    cache = tmp_path / "answers.jsonl"
    full = teacher_answers(generate, records, cache, cfg)
    assert [a["prompt"] for a in full] == [r["question"] for r in records]
    assert all(a["reference"] == r["answer"] for a, r in zip(full, records))
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])   # killed mid-line
    calls.clear()
    again = teacher_answers(generate, records, cache, cfg)
    assert calls == [[records[3]["question"], records[4]["question"]]]  # only the missing ones
    assert again == full                                             # greedy: same text
    assert [json.loads(x) for x in cache.read_text().splitlines()] == full
    with pytest.raises(SlmkitError, match="other prompts"):
        teacher_answers(generate, records[::-1], cache, cfg)


def test_filters_drop_short_long_and_wrong_answers():
    answers = [{"prompt": "a", "response": "so the result is #### 4", "reference": "#### 4"},
               {"prompt": "b", "response": "#### 5", "reference": "#### 4"},
               {"prompt": "c", "response": "", "reference": "1"},
               {"prompt": "d", "response": "word " * 50 + "#### 3", "reference": "3"}]
    kept, counts = filter_answers(answers, min_tokens=1, max_tokens=20, check="gsm8k")
    assert [k["prompt"] for k in kept] == ["a"]
    assert counts == {"kept": 1, "too_short": 1, "too_long": 1, "wrong_answer": 1}
    with pytest.raises(SlmkitError):
        filter_answers(answers, check="regex")


@pytest.mark.parametrize("start", ["dense", "width-pruned", "dequantized"])
def test_lora_trains_merges_and_reloads_as_a_plain_checkpoint(start, tiny_tok, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from slmkit.compress import RTNConfig, WidthPruneConfig, prune, quantize
    from slmkit.models import save
    from slmkit.runtime.modules import dequantize
    from slmkit.train.lora import LoRAConfig, add_lora, merge_lora

    model = tiny_model("qwen2", seed=0)
    ids = torch.randint(3, 500, (8, 24), generator=torch.Generator().manual_seed(2))
    if start == "width-pruned":
        prune(model, WidthPruneConfig(target=0.25), ids)
    elif start == "dequantized":
        dequantize(quantize(model, RTNConfig(bits=4, group_size=32)))
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = add_lora(model, LoRAConfig(r=8, roles=["q", "v", "up", "down"]))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    data = Batches(ids)
    before = float(CausalLM().loss(peft_model, data.batch(0, 8, 0))[0].detach())
    train(peft_model, CausalLM(), data, TrainConfig(steps=40, batch_size=4, lr=2e-2, warmup=0), tmp_path / "run")
    after = float(CausalLM().loss(peft_model, data.batch(0, 8, 0))[0].detach())
    assert after < 0.92 * before                                 # frozen base alone: 1.0x
    merged = merge_lora(peft_model)
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, frozen[k])]
    assert changed and all(any(r in k for r in ("q_proj", "v_proj", "up_proj", "down_proj")) for k in changed)
    with torch.no_grad():
        ref = merged(ids[:2]).logits
    out = save(merged, tiny_tok, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(plain(ids[:2]).logits, ref, atol=1e-5)


def test_batches_carry_soft_targets_with_their_rows_and_refuse_bad_shapes():
    ids = torch.arange(6 * 5).reshape(6, 5)
    soft_ids = ids[..., None] * 10 + torch.arange(3)           # row r, position i -> 10 * ids + j
    soft_probs = torch.rand(6, 5, 3)
    data = Batches(ids, soft_ids=soft_ids, soft_probs=soft_probs)
    for index in range(4):
        b = data.batch(index, 2, seed=3)
        assert torch.equal(b["soft_ids"][..., 0], b["input_ids"] * 10)
        rows = [int(r[0]) // 5 for r in b["input_ids"]]
        assert torch.equal(b["soft_probs"], soft_probs[rows])
    assert data.head(2).soft_ids.shape == (2, 5, 3)
    with pytest.raises(SlmkitError, match="both"):
        Batches(ids, soft_ids=soft_ids)
    with pytest.raises(SlmkitError, match=r"\[n, length, k\]"):
        Batches(ids, soft_ids=soft_ids[:, :4], soft_probs=soft_probs[:, :4])
    with pytest.raises(SlmkitError, match="soft_weight"):
        CausalLM(soft_weight=1.5)
