"""Weak-to-strong acceptance on a multiple-choice task: a weak teacher labels the training items
(its own zero-shot picks), a strong student is fine-tuned on those labels, and the performance
gap recovered is reported against the strong ceiling (the same student fine-tuned on the true
labels):  PGR = (acc weak-to-strong - acc weak) / (acc ceiling - acc weak), on held-out items.

Training rows are the exact strings the multiple-choice scorer reads ("Question: ...\\nAnswer:"
plus " choice"), with the loss on the answer tokens only, so fine-tuning and evaluation agree.
The models may have different tokenizers: the labels are text.

    python benchmarks/weak_to_strong.py --weak default --strong models/qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import AUSTEN, model_arg, write_result  # noqa: E402

MC = AUSTEN.parent / "wordnet_mc_dev.jsonl"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weak", type=model_arg, required=True)
    ap.add_argument("--strong", type=model_arg, required=True)
    ap.add_argument("--data", default=str(MC))
    ap.add_argument("--test-every", type=int, default=3, help="every Nth item is held out")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--tag", default="")
    return ap.parse_args()


def mc_rows(tok, items, picks: list[int]):
    """Batches of "Question: q\\nAnswer: <picked choice>" with only the choice scored."""
    import torch

    from slmkit.eval.mc import MCConfig, encode_pair
    from slmkit.train.data import IGNORE, Batches

    cfg = MCConfig()
    seqs = []
    for item, k in zip(items, picks):
        ctx, cont = encode_pair(tok, cfg.prompt.format(question=item.question), cfg.delimiter + item.choices[k])
        seqs.append((ctx + cont, len(ctx)))
    length = max(len(s) for s, _ in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, (s, n) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, n: len(s)] = torch.tensor(s[n:])
        mask[i, : len(s)] = 1
    return Batches(ids, labels, mask)


def accuracy(model, tok, items) -> tuple[float, list[int]]:
    from slmkit.eval.mc import multiple_choice

    r = multiple_choice(model, tok, items)
    return r["acc"], [x["pred"] for x in r["items"]]


def finetune(model, tok, items, picks, args) -> dict:
    from slmkit.train import CausalLM, TrainConfig, train

    steps = math.ceil(len(items) / args.batch_size) * args.epochs
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, warmup=0.1, log_every=5)
    return train(model, CausalLM(), mc_rows(tok, items, picks), cfg, None)


def main() -> int:
    args = parse_args()
    from slmkit.collab.weak_to_strong import performance_gap_recovered
    from slmkit.eval.mc import load_items
    from slmkit.models import load

    items = load_items(args.data)
    test = [it for i, it in enumerate(items) if i % args.test_every == 0]
    train_items = [it for i, it in enumerate(items) if i % args.test_every != 0]

    weak, wtok = load(args.weak, "float32")
    acc = {"weak": accuracy(weak, wtok, test)[0]}
    weak_train_acc, weak_picks = accuracy(weak, wtok, train_items)
    del weak
    gold = [it.answer for it in train_items]
    label_acc = sum(a == b for a, b in zip(weak_picks, gold)) / len(gold)
    print(f"weak: held-out acc {acc['weak']:.3f}; its labels are right on {label_acc:.1%} of the "
          f"{len(train_items)} training items", flush=True)

    strong, stok = load(args.strong, "float32")
    acc["strong zero-shot"] = accuracy(strong, stok, test)[0]
    print(f"strong zero-shot: held-out acc {acc['strong zero-shot']:.3f}", flush=True)
    summaries = {}
    for name, picks in (("weak-to-strong", weak_picks), ("strong ceiling", gold)):
        student = copy.deepcopy(strong)
        summaries[name] = finetune(student, stok, train_items, picks, args)
        acc[name] = accuracy(student.eval(), stok, test)[0]
        print(name, acc[name], flush=True)
        del student
    from slmkit.errors import SlmkitError

    try:
        pgr = performance_gap_recovered(acc["weak"], acc["weak-to-strong"], acc["strong ceiling"])
    except SlmkitError as e:
        pgr = None
        print(e)
    for k, v in acc.items():
        print(f"{k:18s} held-out acc {v:.3f}")
    if pgr is not None:
        print(f"PGR {pgr:.2f} on {len(test)} held-out items (trained on {len(train_items)})")
    payload = {"args": vars(args), "accuracy": acc, "pgr": pgr, "weak_label_accuracy": label_acc,
               "n_train": len(train_items), "n_test": len(test), "train": summaries,
               "weak_train_acc": weak_train_acc}
    print(f"wrote {write_result('weak_to_strong' + args.tag, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
