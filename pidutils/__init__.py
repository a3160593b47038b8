"""pidutils: the code of the book "Efficient transformer decoding", one module per concern.

The floors, each importing only from the floors below it (``tests/test_architecture.py``):

1. ``checks`` (argument checks), ``cost`` (the papers' formulas), ``papers`` (quoted figures), ``tables``;
2. ``data``, ``tokenizer``, ``models``, ``metrics``, ``train``, ``bench`` (timers), ``plots``,
   ``widgets``, ``listing``, ``zoo`` (the shipped checkpoints);
3. the engine: ``batching`` (tokenise, pad, batch), ``t5`` (encode once, the cross-attention
   memory, the KV cache, the decoder pass, the greedy loop), ``sequential`` (the baseline),
   ``causal`` (a decoder-only model's pass, attention with its log-sum-exp and the merge);
4. the decoding methods, siblings that never import each other: ``decode`` (chapter 1), ``pie``
   (chapter 2), ``pid`` (chapter 3), ``pipelined`` (chapter 4), ``speculative`` (chapter 5),
   ``medusa`` (chapter 6), ``shared_prefix`` (chapter 7), ``compression`` (chapter 8);
5. measurements: ``multiprompt`` (chapters 2 and 3), ``measure`` (models and dialogues side by
   side, chapters 4 to 6), ``drafts`` and ``distribution`` (chapter 5), ``trees`` (chapter 6),
   ``prefixes`` (chapter 7), ``memories`` (chapter 8), ``zoo.training``;
6. ``experiments`` (the benchmarks' rows), then the command lines ``python -m pidutils.bench`` and
   ``python -m pidutils.zoo``.

A chapter starts with ``from pidutils import ...`` of the modules it uses; the names below are the
ones readers call most.
"""
from . import (batching, bench, causal, checks, compression, cost, data, decode, drafts, measure, medusa, memories,
               metrics, models, multiprompt, papers, pid, pie, pipelined, plots, prefixes, sequential, shared_prefix,
               speculative, t5, tables, trees, widgets, zoo)
from .listing import listing
from .models import pick_device, pick_dtype, random_t5
from .tables import Table

__all__ = ["Table", "batching", "bench", "causal", "checks", "compression", "cost", "data", "decode", "drafts",
           "listing", "measure", "medusa", "memories", "metrics", "models", "multiprompt", "papers", "pick_device",
           "pick_dtype", "pid", "pie", "pipelined", "plots", "prefixes", "random_t5", "sequential", "shared_prefix",
           "speculative", "t5", "tables", "trees", "widgets", "zoo"]
