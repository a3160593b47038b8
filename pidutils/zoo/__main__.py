"""``python -m pidutils.zoo train NAME [--steps N] [--out DIR]``: retrain a shipped checkpoint."""
from __future__ import annotations

import argparse
import pathlib
import platform
import sys

import torch

from . import RECIPES, recipe_dict, save
from .training import train_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pidutils.zoo")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="retrain a checkpoint from scratch, reproducibly")
    t.add_argument("name", choices=sorted(RECIPES))
    t.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    t.add_argument("--out", type=pathlib.Path, default=None, help="write here instead of the package")
    args = parser.parse_args(argv)
    model, tokenizer, result = train_checkpoint(args.name, steps=args.steps)
    result["machine"] = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    result["recipe"] = recipe_dict(args.name)
    folder = save(args.name, model, tokenizer, result, args.out)
    print(f"saved {args.name} to {folder}: test JGA {result['test']['jga']:.3f}, "
          f"slot accuracy {result['test']['slot_accuracy']:.4f}, {result['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
