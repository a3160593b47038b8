"""``python -m pidutils.zoo train NAME [--steps N] [--out DIR] [--device cpu|cuda]``: retrain a shipped checkpoint
(or a shipped set of Medusa heads, chapter 6: for Medusa-1, ``--steps`` counts epochs; Medusa-2 trains
its body too and saves it beside the heads; or a compressor, chapter 8).

``python -m pidutils.zoo cost [--device cpu|cuda]``: measure chapter 5's cost ratio c (a draft step over
a target step) for each of its drafts and record them in the target's report."""
from __future__ import annotations

import argparse
import pathlib
import sys

from ..drafts import DRAFTS, TARGET, record_cost_ratio
from . import (CAUSAL_RECIPES, COMPRESSOR_RECIPES, HEAD_RECIPES, RECIPES, SHARD_SIZE, JointRecipe, compressor_path,
               heads_path, recipe_dict, save)
from .training import train_causal, train_checkpoint, train_compressor, train_heads, train_joint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pidutils.zoo")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="retrain a checkpoint reproducibly, from a random model or its recipe's init")
    t.add_argument("name", choices=sorted(RECIPES) + sorted(CAUSAL_RECIPES) + sorted(HEAD_RECIPES)
                   + sorted(COMPRESSOR_RECIPES))
    t.add_argument("--steps", type=int, default=None, help="override the recipe's step count (for Medusa-1 heads: epochs)")
    t.add_argument("--out", type=pathlib.Path, default=None, help="write here instead of the package")
    t.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if present")
    c = sub.add_parser("cost", help="measure chapter 5's draft/target step cost ratio into the target's report")
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.command == "cost":
        for draft in DRAFTS:
            record = record_cost_ratio(device=args.device, draft=draft)
            print(f"{TARGET} with {draft}: target step {record['target_step_ms']:.2f} ms, draft step "
                  f"{record['draft_step_ms']:.2f} ms, c = {record['c']:.3f} ({record['target_over_draft']:.1f}x) "
                  f"on {record['machine']}")
        return 0
    if isinstance(HEAD_RECIPES.get(args.name), JointRecipe):
        body, tokenizer, heads, report = train_joint(args.name, steps=args.steps, device=args.device)
        folder = args.out or heads_path(args.name)
        body.half().save_pretrained(folder, max_shard_size=SHARD_SIZE)
        tokenizer.save_pretrained(folder)
        heads.save(folder, report)
        top1 = ", ".join(f"{acc[0]:.3f}" for acc in report["test_accuracy"])
        print(f"saved {args.name} to {folder}: body's test JGA {report['test']['jga']:.3f}, heads' test top-1 "
              f"accuracy {top1}, {report['wall_seconds']:.0f} s")
        return 0
    if args.name in COMPRESSOR_RECIPES:  # chapter 8
        compressor, report = train_compressor(args.name, steps=args.steps, device=args.device)
        folder = args.out or compressor_path(args.name)
        compressor.save(folder, report)
        jga = ", ".join(f"k={k} {s['jga']:.3f}" for k, s in report["test"].items())
        print(f"saved {args.name} to {folder}: test JGA {jga}, {report['wall_seconds']:.0f} s")
        return 0
    if args.name in HEAD_RECIPES:
        heads, report = train_heads(args.name, epochs=args.steps, device=args.device)
        folder = args.out or heads_path(args.name)
        heads.save(folder, report)
        top1 = ", ".join(f"{acc[0]:.3f}" for acc in report["test_accuracy"])
        print(f"saved {args.name} to {folder}: heads' test top-1 accuracy {top1}, {report['wall_seconds']:.0f} s")
        return 0
    if args.name in CAUSAL_RECIPES:  # chapter 7, shipped in float16
        model, tokenizer, result = train_causal(args.name, steps=args.steps, device=args.device)
        model = model.half()
    else:
        model, tokenizer, result = train_checkpoint(args.name, steps=args.steps, device=args.device)
    result["recipe"] = recipe_dict(args.name)
    folder = save(args.name, model, tokenizer, result, args.out)
    print(f"saved {args.name} to {folder}: test JGA {result['test']['jga']:.3f}, "
          f"slot accuracy {result['test']['slot_accuracy']:.4f}, {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
