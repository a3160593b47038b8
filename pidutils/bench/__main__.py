"""The benchmark command line: ``python -m pidutils.bench <experiment> [--device cpu|cuda] [--json PATH]``.

It runs one experiment of :mod:`pidutils.experiments`, which prints its figures as it measures
them, and writes the returned figures as JSON if asked. Its own module, so that the timers in
:mod:`pidutils.bench` import nothing that uses them.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from ..experiments import EXPERIMENTS, run_experiment


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the experiment, write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m pidutils.bench", description=__doc__)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    result = run_experiment(args.experiment, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=_jsonable)
        print(f"wrote {args.json}")
    return 0


def _jsonable(obj: object) -> object:
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else str(obj)


if __name__ == "__main__":
    sys.exit(main())
