"""The benchmark experiments behind ``python -m pidutils.bench`` (one function per experiment).

Each experiment prints its figures as it measures them and returns them as a dict, which the
command line writes as JSON. Chapters call the same functions, so the book and the command agree.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from . import drafts, measure, trees, zoo
from .bench import Timing, compare, describe, peak_memory, speedup, time_fn
from .checks import check_choice
from .compression import load_compressor
from .cost import Device, forward_work, memory_held, speculative_speedup
from .decode import decode_n_tokens, greedy_uncached
from .metrics import evaluate
from .models import pick_device, pick_dtype, random_llama, random_t5, weights_per_decode_step
from .pid import pid_generate
from .multiprompt import (EVERY_METHOD, LOOP_METHODS, REFERENCE, answer_fn, encoder_tokens, flops_row, timing_row,
                          workload)
from .pipelined import DELTA_TS
from .prefixes import prefix_row
from .memories import memory_row, memory_shape, quality_by_k, slots_lost
from .shared_prefix import WAYS
from .medusa import Typical, cartesian_tree, load_heads
from .speculative import Sampling

EXPERIMENTS: dict[str, Callable[[torch.device], dict]] = {}


def experiment(name: str) -> Callable:
    """Register ``fn(device) -> dict`` under ``name``."""
    def register(fn: Callable[[torch.device], dict]) -> Callable[[torch.device], dict]:
        EXPERIMENTS[name] = fn
        return fn
    return register


def run_experiment(name: str, device: str | None = None) -> dict:
    """Run one registered experiment on ``device`` (default: CUDA if present, else CPU)."""
    check_choice("experiment", name, EXPERIMENTS)
    return EXPERIMENTS[name](pick_device(device))


@experiment("decode-cache")
def decode_cache(device: torch.device, shape: str = "t5-small", batch: int = 1, source_len: int = 64,
                 new_tokens: int = 64, repeats: int = 5) -> dict:
    """Greedy decoding with the KV cache against rerunning the decoder each step (chapter 1)."""
    model = random_t5(shape, device=device)
    torch.manual_seed(0)
    input_ids = torch.randint(2, model.config.vocab_size, (batch, source_len), device=device)
    cached = decode_n_tokens(model, input_ids, new_tokens)
    if not torch.equal(cached, greedy_uncached(model, input_ids, new_tokens)):
        raise AssertionError("cached and uncached greedy decoding disagree")
    t = compare({"uncached": lambda: greedy_uncached(model, input_ids, new_tokens),
                 "cached": lambda: decode_n_tokens(model, input_ids, new_tokens)},
                device, warmup=1, repeats=repeats)
    step = decode_step_work(model, batch, source_len + new_tokens // 2)
    result = {
        "experiment": "decode-cache",
        "setup": describe(device, torch.float32, model=shape, batch=batch, source_len=source_len,
                          new_tokens=new_tokens),
        "uncached_s": t["uncached"].median, "cached_s": t["cached"].median,
        "speedup": speedup(t["uncached"], t["cached"]),
        "cached_tokens_per_s": batch * new_tokens / t["cached"].median,
        "cached_bandwidth_GBps": step.bytes * new_tokens / t["cached"].median / 1e9,
    }
    print(result["setup"].replace(" | model=", "\nmodel="))
    print(f"uncached decoding: {t['uncached']}")
    print(f"cached decoding:   {t['cached']}")
    print(f"KV-cache speed-up: {result['speedup']:.2f}x  "
          f"({result['cached_tokens_per_s']:.0f} generated tokens/s, "
          f"~{result['cached_bandwidth_GBps']:.1f} GB/s of weights and cache read)")
    return result


def decode_step_work(model, batch: int, context: int):
    """FLOPs and bytes of one cached decode step of ``model`` (see :func:`pidutils.cost.forward_work`)."""
    return forward_work(weights_per_decode_step(model), batch, 1, context, model.config.d_model,
                        model.config.num_decoder_layers, model.dtype.itemsize)


def decode_latency(model, device: torch.device, roof: Device, batch: int, new_tokens: int,
                   source_len: int = 64, repeats: int = 3) -> tuple[float, float]:
    """Measured and predicted seconds to decode ``new_tokens`` tokens for ``batch`` sequences.

    The prediction is the roofline's: each step takes at least max(FLOPs / peak, bytes / bandwidth)
    on ``roof``, the device as measured by :func:`pidutils.bench.measure_device` (chapter 1).
    """
    generator = torch.Generator().manual_seed(batch * 1000 + new_tokens)
    input_ids = torch.randint(2, model.config.vocab_size, (batch, source_len), generator=generator).to(device)
    measured = time_fn(lambda: decode_n_tokens(model, input_ids, new_tokens), device, warmup=1,
                       repeats=repeats).median
    predicted = sum(decode_step_work(model, batch, source_len + t).roofline_seconds(roof)
                    for t in range(new_tokens))
    return measured, predicted


def _multiprompt_models(device: torch.device, shape: str | None):
    """Each method's (model, tokenizer), :data:`REFERENCE` included: the shipped tiny checkpoints,
    or one random model at ``shape``."""
    if shape is None:
        pie, pid = zoo.load("pie-t5-tiny", device), zoo.load("pid-t5-tiny", device)
        return {"PIE": pie, REFERENCE: pie, "PID-copy": pid, "PID-shared": pid}, "shipped tiny"
    _, tokenizer = zoo.load("pid-t5-tiny")
    model = random_t5(shape, device=device).to(pick_dtype(device))
    model.resize_token_embeddings(len(tokenizer))
    return {m: (model, tokenizer) for m in EVERY_METHOD}, f"random {shape}"


def _optimal_batch(rows: list[dict], U: int) -> dict:
    """The paper's batched figure (its §4.2): each method's latency per dialogue at the batch size
    that is best *for that method*, and PIE's over PID-shared's, at ``U``."""
    rows = [r for r in rows if r["U"] == U]
    best = {m: min(rows, key=lambda r: r[f"{m}_s"] / r["b"]) for m in ("PIE", "PID-shared")}
    per = {m: best[m][f"{m}_s"] / best[m]["b"] for m in best}
    return {"U": U, "batches": sorted({r["b"] for r in rows}), **{f"{m}_b": best[m]["b"] for m in best},
            **{f"{m}_s_per_dialogue": per[m] for m in best}, "speedup": per["PIE"] / per["PID-shared"]}


def time_methods(methods: dict[str, tuple], split, device: torch.device, U: int, b: int,
                 repeats: int = 3) -> dict[str, Timing]:
    """Time each method's answers (``methods``: name -> (model, tokenizer)) to the same ``b`` dialogues
    and ``U`` prompts, interleaved."""
    documents, prompts = workload(split, b, U)
    fns = {m: answer_fn(m, model, tok, documents, prompts) for m, (model, tok) in methods.items()}
    return compare(fns, device, warmup=1, repeats=repeats)


@experiment("pie")
def pie_latency(device: torch.device, Us: tuple[int, ...] = (1, 5, 10, 30), repeats: int = 5) -> dict:
    """PIE's latency per dialogue as U grows, with the shipped ``pie-t5-tiny`` (chapter 2): on the
    book's cached decoder loop (``PIE``) and through Hugging Face's ``generate`` (``PIE-generate``),
    timed interleaved."""
    model, tokenizer = zoo.load("pie-t5-tiny", device)
    split = zoo.test_split("pie-t5-tiny")
    result = {"experiment": "pie", "setup": describe(device, model.dtype, model="pie-t5-tiny", b=1), "rows": []}
    print(result["setup"])
    both = {"PIE": (model, tokenizer), REFERENCE: (model, tokenizer)}
    for U in Us:
        documents, prompts = workload(split, 1, U)
        t = time_methods(both, split, device, U, 1, repeats)
        tokens = encoder_tokens("PIE", tokenizer, documents, prompts)
        result["rows"].append({"U": U, "PIE_s": t["PIE"].median, f"{REFERENCE}_s": t[REFERENCE].median,
                               "encoder_tokens": tokens})
        print(f"U={U:2d}: PIE {t['PIE']} | {REFERENCE} {t[REFERENCE]}  ({tokens} encoder tokens)")
    return result


@experiment("pid")
def pid_speedups(device: torch.device, shape: str | None = None, Us: tuple[int, ...] = (1, 5, 10, 30),
                 batches: tuple[int, ...] = (1, 2, 4, 8), repeats: int = 3) -> dict:
    """PID-shared against PIE and PID-copy, single and batched, with FLOPs and peak memory (chapter 3).

    PIE, PID-copy and PID-shared run on the book's cached decoder loop; PIE through Hugging Face's
    ``generate`` (``PIE-generate``) is timed beside them as the outside reference. With several
    batch sizes, ``optimal`` is the paper's batched figure: each method at its own best batch size
    (per dialogue), at the largest U. On the CPU it uses the shipped tiny checkpoints; on CUDA,
    random models at T5-base shapes (latency depends on shapes only), which never stop early, so
    every method decodes 8 tokens.
    """
    shape = shape or ("t5-base" if device.type == "cuda" else None)
    methods, what = _multiprompt_models(device, shape)
    split = zoo.test_split("pid-t5-tiny")
    dtype = methods["PID-shared"][0].dtype
    result = {"experiment": "pid", "setup": describe(device, dtype, models=what), "rows": []}
    print(result["setup"])
    for b in batches:
        for U in Us:
            documents, prompts = workload(split, b, U)
            runs = {m: answer_fn(m, model, tok, documents, prompts) for m, (model, tok) in methods.items()}
            answers = {m: run() for m, run in runs.items()}
            if answers["PID-shared"] != answers["PID-copy"]:
                raise AssertionError("PID-shared and PID-copy disagree")
            if answers["PIE"] != answers[REFERENCE]:
                raise AssertionError("PIE on the book's loop and through generate disagree")
            t = time_methods(methods, split, device, U, b, repeats)
            row = (timing_row(t, b=b, U=U) | {"flops_ratio": flops_row(methods, documents, prompts)["flops_ratio"]}
                   | {f"{m}_peak_bytes": peak_memory(runs[m], device) for m in LOOP_METHODS})
            result["rows"].append(row)
            print(f"b={b} U={U:2d}: PIE {t['PIE'].median * 1e3:8.1f} ms (generate {t[REFERENCE].median * 1e3:8.1f})"
                  f" | PID-copy {t['PID-copy'].median * 1e3:7.1f} | PID-shared {t['PID-shared'].median * 1e3:7.1f}"
                  f" | vs PIE {row['speedup_vs_pie']:5.2f}x | vs copy {row['speedup_vs_copy']:4.2f}x"
                  f" | FLOPs {row['flops_ratio']:.3f}x | peak MB "
                  + "/".join(f"{row[m + '_peak_bytes'] / 2**20:.1f}" for m in LOOP_METHODS))
    if len(batches) > 1:
        result["optimal"] = _optimal_batch(result["rows"], max(Us))
        o = result["optimal"]
        print(f"optimal batch, U={o['U']}: PIE at b={o['PIE_b']}, PID-shared at b={o['PID-shared_b']}: "
              f"{o['speedup']:.2f}x per dialogue")
    return result


@experiment("pipelined")
def pipelined_speedups(device: torch.device, dialogues: int = 50, batch: int = 8, repeats: int = 3,
                       quality_dialogues: int = 200) -> dict:
    """Sequential against pipelined decoding of the full state, on the same test dialogues (chapter 4).

    Seconds and throughput end to end (the paper's examples per second) and in the decoding phase
    alone, at b = 1 and batched; the ratio of time-steps; peak memory; the speed-up against the
    number of subsequences (the paper's Figure 4); and Δt = 1..4 (its Table 5), timed on the first
    ``dialogues`` test dialogues in :func:`pidutils.models.pick_dtype`. JGA (``jga``, at Δt = 1) on
    the first ``quality_dialogues`` (all 200 by default) in fp32, and in ``quality`` with its
    standard error and each Δt paired with the sequential decoder (McNemar). Hugging Face
    ``generate`` on the sequential model is a second, outside baseline.
    """
    every = measure.load_testbed(measure.FULL_STATE, device=device, dialogues=max(dialogues, quality_dialogues))
    dtype = pick_dtype(device)
    bed = every.select(0, dialogues).cast(dtype)
    n = len(bed.documents)
    result = {"experiment": "pipelined", "setup": describe(device, dtype, models="seq/pipe-t5-tiny", dialogues=n,
                                                           delta_t=1), "throughput": []}
    print(result["setup"])
    for b in (1, batch):
        for row in measure.full_state_throughput(bed, b=b, repeats=repeats):
            result["throughput"].append(row)
            print(f"b={b} {row['phase']:15s}: " + " | ".join(f"{name} {row[measure.row_key(name) + '_per_s']:6.1f} ex/s"
                                                          for name in measure.full_state_ways()
                                                          if measure.row_key(name) + "_per_s" in row)
                  + f" | pipelined/sequential {row['speedup']:.2f}x"
                  + (f" | pipelined/HF generate {row['speedup_vs_hf']:.2f}x (a different baseline)"
                     if "speedup_vs_hf" in row else ""))
    ways = measure.full_state_ways(hugging_face=False)
    seq_steps, pipe_steps = (measure.steps_taken(bed, ways[name]) for name in ("sequential", "pipelined"))
    result["steps"] = {"sequential": sum(seq_steps) / n, "pipelined": sum(pipe_steps) / n,
                       "ratio": sum(seq_steps) / sum(pipe_steps)}
    print(f"time-steps per dialogue: sequential {result['steps']['sequential']:.1f}, pipelined "
          f"{result['steps']['pipelined']:.1f}: ratio {result['steps']['ratio']:.2f}x (the speed-up's upper bound)")
    result["encoder_bound"] = encoder_bound(result["throughput"], result["steps"]["ratio"],
                                            encoder_s=measure.encoding_seconds(bed, role="sequential", repeats=repeats))
    bound = result["encoder_bound"]
    print(f"b=1: the encoder takes {bound['encoder_share']:.0%} of a sequential request; with a "
          f"decoding phase at the time-step ratio, end to end could reach {bound['end_to_end_bound']:.2f}x")
    one = measure.runs(bed.select(0, batch), ways, b=batch)
    result["peak_bytes"] = {name: peak_memory(fn, device) for name, fn in one.items()}
    print(f"peak memory, b={batch}: " + ", ".join(f"{k} {v / 2**20:.2f} MB" for k, v in result["peak_bytes"].items()))
    result["quality"] = pipelined_quality(every.select(0, quality_dialogues))
    result["jga"] = {"sequential": result["quality"]["sequential"]["jga"],
                     "pipelined": result["quality"]["pipelined delta_t=1"]["jga"]}
    result["by_subsequences"] = measure.subsequence_speedups(bed, repeats=repeats)
    print("speed-up by number of subsequences (Figure 4): " + ", ".join(
        f"{k}: {v:.2f}x" for k, v in sorted(result["by_subsequences"].items())))
    result["delta_t"] = measure.delta_t_throughput(bed, repeats=repeats)
    for row in result["delta_t"]:
        print(f"Δt={row['delta_t']}: {row['examples_per_s']:.1f} ex/s, {row['steps']:.1f} steps per dialogue")
    return result


def encoder_bound(throughput: list[dict], steps_ratio: float, *, encoder_s: float) -> dict:
    """What the encoder, which both decoders run once per dialogue, leaves of the time-step ratio end to
    end at b = 1 (Amdahl's law), from the encoder's own measured seconds for the dialogues
    (:func:`pidutils.measure.encoding_seconds`) and the sequential decoding phase's: the encoder's
    share of a sequential request, and the end-to-end speed-up if the decoding phase ran at the
    ratio."""
    phase = next(row for row in throughput if row["b"] == 1 and row["phase"] == "decoding phase")["sequential_s"]
    return {"encoder_s": encoder_s, "encoder_share": encoder_s / (encoder_s + phase),
            "end_to_end_bound": (encoder_s + phase) / (encoder_s + phase / steps_ratio)}


def pipelined_quality(bed: measure.Testbed) -> dict:
    """JGA of the sequential decoder and of the pipelined one at every Δt, on every dialogue of
    ``bed``, with binomial standard errors and each Δt paired with the sequential decoder."""
    ways = {"sequential": measure.sequential_way()} | {f"pipelined delta_t={d}": measure.pipelined_way(delta_t=d)
                                                        for d in DELTA_TS}
    right = measure.outcomes(bed, ways)
    sequential = right.pop("sequential")
    quality = {"dialogues": len(sequential), "sequential": {"jga": sum(sequential) / len(sequential),
                                                            "stderr": measure.standard_error(sequential)}}
    print(f"JGA on {quality['dialogues']} test dialogues: sequential {quality['sequential']['jga']:.3f} "
          f"± {quality['sequential']['stderr']:.3f}")
    for name, pipelined in right.items():
        only_seq, only_pipe, p = measure.paired(sequential, pipelined)
        row = quality[name] = {"jga": sum(pipelined) / len(pipelined), "stderr": measure.standard_error(pipelined),
                               "only_sequential_right": only_seq, "only_pipelined_right": only_pipe, "mcnemar_p": p}
        print(f"  {name.replace('delta_t', 'Δt')}: {row['jga']:.3f} ± {row['stderr']:.3f}; only sequential right "
              f"{only_seq}, only pipelined right {only_pipe}, McNemar p = {p:.2f}")
    return quality


@experiment("speculative")
def speculative_speedups(device: torch.device, dialogues: int = 20, repeats: int = 3,
                         gammas: tuple[int, ...] = tuple(range(1, 9)), temperatures: tuple[float, ...] = (0.0, 1.0),
                         ngram_dialogues: int = 2000, names: tuple[str, ...] = ()) -> dict:
    """Target-only against speculative decoding with each of chapter 5's drafts (``names``; all of
    :data:`pidutils.drafts.DRAFTS` when empty), for each γ, at T = 0 and T = 1, on the same test
    dialogues one at a time (chapter 5).

    Per draft (:func:`speculative_draft`): whole requests and the decoding phase alone, the measured
    α, c and speed-up beside the formula's prediction and a refined one; then α of unigram and
    bigram drafts beside the trained drafts.
    """
    bed = drafts.load_speculative(device=device, dialogues=dialogues)
    result = {"experiment": "speculative", "drafts": {},
              "setup": describe(device, bed["target"].dtype, target=drafts.TARGET, drafts="/".join(drafts.DRAFTS),
                                dialogues=len(bed.documents), b=1)}
    print(result["setup"])
    result["verify_cost"] = {g: drafts.verify_cost(bed, gamma=g) for g in gammas}
    print("a target pass over γ+1 tokens, in target steps: " +
          ", ".join(f"γ={g}: {v:.2f}" for g, v in result["verify_cost"].items()))
    for name in names or drafts.DRAFTS:
        result["drafts"][name] = speculative_draft(drafts.with_draft(bed, name), device, result["verify_cost"],
                                                   repeats=repeats, gammas=gammas, temperatures=temperatures)
    result["alpha_table"] = {t: drafts.alpha_table(bed, sampling=Sampling(t), ngram_dialogues=ngram_dialogues,
                                                   drafts=drafts.DRAFTS[1:]) for t in temperatures}
    for t, table in result["alpha_table"].items():
        print(f"α at T={t:g}: " + ", ".join(f"{k} {v:.3f}" for k, v in table.items()))
    return result


def speculative_draft(bed: measure.Testbed, device: torch.device, verify: dict[int, float], *, repeats: int,
                      gammas: tuple[int, ...], temperatures: tuple[float, ...]) -> dict:
    """One draft's rows of :func:`speculative_speedups`: costs, JGA, and for each temperature and γ the
    speed-ups (end to end and decoding phase), the formula's and the refined predictions, and the
    comparison with Hugging Face's assisted generation. At T = 0 every way's tokens must equal the
    target's own: an ``AssertionError`` otherwise."""
    n, name = len(bed.documents), bed.names["draft"]
    costs = drafts.cost_ratio(bed)
    result = {"costs": costs, "jga": measure.jga(bed, {role: measure.sequential_way(role) for role in ("target", "draft")}),
              "by_temperature": {}}
    print(f"[{name}] step: target {costs['target_step_s'] * 1e3:.2f} ms, draft {costs['draft_step_s'] * 1e3:.2f} ms, "
          f"c = {costs['c']:.3f} (target/draft {1 / costs['c']:.1f}x); encoders: target "
          f"{costs['target_encoder_s'] * 1e3:.1f} ms, draft {costs['draft_encoder_s'] * 1e3:.1f} ms; JGA alone: "
          f"target {result['jga']['target']:.3f}, draft {result['jga']['draft']:.3f}")
    for temperature in temperatures:
        sampling = Sampling(temperature)
        ways = measure.speculative_ways(gammas, sampling=sampling)
        if temperature == 0:
            check_same_answers(bed, ways)
        whole = compare(measure.batch_runs(bed, ways), device, warmup=1, repeats=repeats)
        phase = compare(measure.batch_runs(bed, ways, decoding_only=True), device, warmup=1, repeats=repeats)
        rows = []
        for g in gammas:
            a, per_round = drafts.alpha(bed, gamma=g, sampling=sampling)
            way = f"speculative gamma={g}"
            row = {"gamma": g, "alpha": a, "tokens_per_round": per_round,
                   "target_s": whole["target"].median, "speculative_s": whole[way].median,
                   "hf_assisted_s": whole[f"HF assisted gamma={g}"].median,
                   "target_decoding_s": phase["target"].median, "speculative_decoding_s": phase[way].median,
                   "predicted": speculative_speedup(a, g, costs["c"]),
                   # the same cost model with what the formula idealises measured instead: the
                   # tokens a round really kept, and the verification pass's cost in steps
                   "refined": per_round / (g * costs["c"] + verify[g]),
                   "end_to_end": speedup(whole["target"], whole[way]),
                   "decoding_phase": speedup(phase["target"], phase[way]),
                   "vs_hf_assisted": speedup(whole[f"HF assisted gamma={g}"], whole[way]),
                   "hf_assisted_vs_target": speedup(whole["target"], whole[f"HF assisted gamma={g}"]),
                   "ms_per_dialogue": whole[way].median / n * 1e3}
            # the formula models the decoding phase; end to end, both encoders come on top of it
            encoders = whole[way].median - phase[way].median
            row["predicted_end_to_end"] = whole["target"].median / (encoders + phase["target"].median / row["predicted"])
            row["of_predicted"] = row["end_to_end"] / row["predicted_end_to_end"]
            row["decoding_of_predicted"] = row["decoding_phase"] / row["predicted"]
            row["decoding_of_refined"] = row["decoding_phase"] / row["refined"]
            rows.append(row)
            print(f"[{name}] T={temperature:g} γ={g}: α {a:.3f}, {per_round:.2f} tokens/round | end to end "
                  f"{row['end_to_end']:.2f}x (predicted {row['predicted_end_to_end']:.2f}x: {row['of_predicted']:.0%}) | "
                  f"decoding phase {row['decoding_phase']:.2f}x (formula {row['predicted']:.2f}x: "
                  f"{row['decoding_of_predicted']:.0%}; refined {row['refined']:.2f}x: {row['decoding_of_refined']:.0%}) "
                  f"| vs HF assisted {row['vs_hf_assisted']:.2f}x (HF assisted vs target {row['hf_assisted_vs_target']:.2f}x)")
        best = max(rows, key=lambda r: r["end_to_end"])
        result["by_temperature"][temperature] = {"target_ms_per_dialogue": whole["target"].median / n * 1e3,
                                                 "by_gamma": rows, "best_gamma": best["gamma"]}
        print(f"[{name}] T={temperature:g}: target alone {whole['target'].median / n * 1e3:.1f} ms per dialogue; "
              f"best γ = {best['gamma']}: {best['end_to_end']:.2f}x end to end, decoding phase "
              f"{best['decoding_phase']:.2f}x ({best['decoding_of_refined']:.0%} of the refined "
              f"{best['refined']:.2f}x), {best['vs_hf_assisted']:.2f}x HF assisted")
    return result


def check_same_answers(bed: measure.Testbed, ways: dict[str, measure.Way], *, reference: str = "target") -> None:
    """Greedy: every way's answer to every dialogue must be the ``reference`` way's own."""
    answers = {name: measure.answers(bed, way) for name, way in ways.items()}
    for name, states in answers.items():
        if states != answers[reference]:
            raise AssertionError(f"{name} and the way {reference!r} disagree at temperature 0")


@experiment("medusa")
def medusa_speedups(device: torch.device, dialogues: int = 20, repeats: int = 3, ks: tuple[int, ...] = (1, 2, 3, 4, 5),
                    sizes: tuple[int, ...] = (4, 8, 16, 32, 64), gammas: tuple[int, ...] = (5, 7),
                    sizes2: tuple[int, ...] = (8, 16, 32)) -> dict:
    """The target alone, chapter 5's speculative decoding with its trained draft, and Medusa-1 over K
    and tree sizes (greedy, and typical acceptance on one tree), on the same test dialogues (chapter 6);
    then Medusa-2 (its own body, alone, with its heads over ``sizes2``, and with chapter 5's draft).

    b = 1 end to end and in the decoding phase, all interleaved, every speed-up over the target
    alone; for each Medusa way its tree's nodes, the tokens a pass makes, a round's cost in steps
    and the speed-up the heads' accuracies predict; JGA of every way; then b = 8 for the target and
    the best Medusa-1, Medusa-2 and γ. Every greedy way's tokens must equal those of its model alone
    (the target, or Medusa-2's body): an ``AssertionError`` otherwise.
    """
    bed, heads = trees.load_medusa(device=device, dialogues=dialogues)
    heads2 = load_heads(trees.MEDUSA2, device=device)
    result = {"experiment": "medusa", "setup": describe(device, bed["target"].dtype, target=drafts.TARGET,
                                                        heads=trees.HEADS, medusa2=trees.MEDUSA2,
                                                        dialogues=len(bed.documents), b=1)}
    print(result["setup"])
    top = max(ks)
    medusas = {f"medusa K={k} n={trees.TREE_SIZE}": (heads, trees.tree_of(k=k), "target") for k in ks}
    medusas |= {f"medusa K={top} n={n}": (heads, trees.tree_of(k=top, size=n), "target") for n in sizes}
    medusas["medusa cartesian 2x3"] = (heads, cartesian_tree(depth=3, top_k=2), "target")  # the fixed baseline
    greedy = {"target": measure.sequential_way("target")}
    greedy |= {f"speculative gamma={g}": measure.speculative_way(gamma=g) for g in gammas}
    greedy |= {name: measure.medusa_way(h, tree=tree, role=role) for name, (h, tree, role) in medusas.items()}
    check_same_answers(bed, greedy)
    two = {f"medusa-2 K={heads2.k} n={n}": (heads2, trees.tree_of(k=heads2.k, size=n, heads=trees.MEDUSA2),
                                            "medusa-2") for n in sizes2}
    greedy2 = {"medusa-2 body alone": measure.sequential_way("medusa-2"),
               f"medusa-2 body, speculative gamma={max(gammas)}":
                   measure.speculative_way(gamma=max(gammas), target="medusa-2")}
    greedy2 |= {name: measure.medusa_way(h, tree=tree, role=role) for name, (h, tree, role) in two.items()}
    check_same_answers(bed, greedy2, reference="medusa-2 body alone")
    typical_name = f"medusa typical K={top} n={trees.TREE_SIZE}"
    medusas[typical_name] = medusas[f"medusa K={top} n={trees.TREE_SIZE}"]
    medusas |= two
    ways = greedy | greedy2 | {typical_name: measure.medusa_way(heads, tree=medusas[typical_name][1],
                                                                typical=Typical())}
    whole = compare(measure.batch_runs(bed, ways), device, warmup=1, repeats=repeats)
    phase = compare(measure.batch_runs(bed, ways, decoding_only=True), device, warmup=1, repeats=repeats)
    result["jga"] = measure.jga(bed, ways, b=1)  # b = 1, as timed: typical acceptance depends on the batch
    answers = {name: measure.answers(bed, way) for name, way in ways.items()}
    rows = []
    for name in ways:
        row = {"way": name, "jga": result["jga"][name], "end_to_end": speedup(whole["target"], whole[name]),
               "decoding_phase": speedup(phase["target"], phase[name]), "seconds": whole[name].median,
               "same_as_target": sum(a == b for a, b in zip(answers[name], answers["target"])) / len(bed.documents)}
        if name in medusas:
            h, tree, role = medusas[name]
            k, acc = len(max(tree, key=len)), trees.calibration(trees.MEDUSA2 if role == "medusa-2" else trees.HEADS)
            rule = Typical() if "typical" in name else None
            row |= {"nodes": len(tree), "k": k, "tokens_per_pass": trees.tokens_per_pass(bed, h, tree=tree,
                                                                                         typical=rule, role=role),
                    "cost": trees.round_cost(bed, h, tree=tree, role=role)}
            row["predicted"] = trees.predicted_speedup(tree, acc[:k], cost=row["cost"])
            row["refined"] = row["tokens_per_pass"] / row["cost"]
        rows.append(row)
        print(f"{name}: end to end {row['end_to_end']:.2f}x, decoding phase {row['decoding_phase']:.2f}x, "
              f"JGA {row['jga']:.3f}" + (f" | {row['nodes']} nodes, {row['tokens_per_pass']:.2f} tokens/pass, "
                                         f"round {row['cost']:.2f} steps, predicted {row['predicted']:.2f}x, "
                                         f"refined {row['refined']:.2f}x" if "nodes" in row else "")
              + ("" if row["same_as_target"] == 1 else f" | same answer as the target {row['same_as_target']:.0%}"))
    result["rows"] = rows
    best = {kind: max((r for r in rows if r["way"].startswith(prefix)), key=lambda r: r["end_to_end"])
            for kind, prefix in (("best_medusa", "medusa K"), ("best_medusa2", "medusa-2 K"),
                                 ("best_speculative", "speculative gamma"))}
    result |= best
    spec = best["best_speculative"]
    for kind in ("best_medusa", "best_medusa2"):
        print(f"best: {best[kind]['way']} {best[kind]['end_to_end']:.2f}x against {spec['way']} "
              f"{spec['end_to_end']:.2f}x end to end "
              f"(Medusa/speculative {best[kind]['end_to_end'] / spec['end_to_end']:.2f}x)")
    picked = [r["way"] for r in best.values()]
    batched = compare(measure.batch_runs(bed, {n: ways[n] for n in ["target", *picked]}, b=8), device, warmup=1,
                      repeats=repeats)
    result["b8"] = {n: speedup(batched["target"], batched[n]) for n in picked}
    print("b=8 end to end: " + ", ".join(f"{n} {v:.2f}x" for n, v in result["b8"].items()))
    return result


REPEATED_ROWS = 100  # the repeated prefix is timed up to this many sequences (b x U): its prefill grows with both


@experiment("shared-prefix")
def shared_prefix_speedups(device: torch.device, Us: tuple[int, ...] = (1, 5, 10, 30, 100),
                           batches: tuple[int, ...] = (1, 8), repeats: int = 3) -> dict:
    """The three ways of decoding U questions of each of b documents with a decoder-only model
    (chapter 7), :func:`pidutils.prefixes.prefix_row` at each U and b, the repeated prefix up to
    :data:`REPEATED_ROWS` sequences: the shipped ``prefix-llama-tiny`` on the CPU; on CUDA, random
    weights at the ``llama-1b`` shape in float16 (latency depends on shapes only), which decode all
    8 answer tokens."""
    if device.type == "cuda":
        tokenizer = zoo.load("pid-t5-tiny")[1]
        model = random_llama("llama-1b", vocab_size=len(tokenizer), device=device, dtype=pick_dtype(device))
        what = "random llama-1b"
    else:
        (model, tokenizer), what = zoo.load("prefix-llama-tiny", device), "prefix-llama-tiny"
    documents = list(zoo.test_split("prefix-llama-tiny")["dialogue"])
    result = {"experiment": "shared-prefix", "setup": describe(device, model.dtype, model=what), "rows": []}
    print(result["setup"])
    for b in batches:
        for U in Us:
            ways = WAYS if b * U <= REPEATED_ROWS else ("cached", "shared")
            row = prefix_row(model, tokenizer, documents[:b], U, ways=ways, repeats=repeats)
            result["rows"].append(row)
            repeated = (f"repeated {row['repeated_s'] * 1e3:8.1f} ms ({row['speedup_vs_repeated']:5.1f}x), "
                        if "repeated_s" in row else "")
            print(f"b={b} U={U:3d} end to end: {repeated}cached {row['cached_s'] * 1e3:7.1f} ms "
                  f"({row['speedup_vs_cached']:4.2f}x), shared {row['shared_s'] * 1e3:7.1f} ms | decoding phase: "
                  f"cached {row['cached_decoding_s'] * 1e3:6.1f} ms, shared {row['shared_decoding_s'] * 1e3:6.1f} ms, "
                  f"{row['decoding_speedup_vs_cached']:4.2f}x (bytes a step {row['predicted_step_ratio']:.2f}x) | "
                  f"prefix KV cached {row['cached_prefix_kv_bytes'] / 2**20:.2f} MB, shared "
                  f"{row['shared_prefix_kv_bytes'] / 2**20:.2f} MB (predicted {row['shared_prefix_kv_predicted'] / 2**20:.2f})"
                  f" | peak MB " + "/".join(f"{way} {row[f'{way}_peak_bytes'] / 2**20:.1f}" for way in ways))
    return result


COMPRESSORS = {"ce": "compress-ce-pid-t5-tiny", "kl": "compress-kl-pid-t5-tiny"}  # chapter 8's, by objective
KEPT_DOCUMENTS = 10_000  # a store of encoded documents, for a reader who encodes once and asks many times


@experiment("compression")
def compression_tradeoff(device: torch.device, ks: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64),
                         timed_ks: tuple[int, ...] = (4, 16, 32, 64), U: int = 30, b: int = 8, dialogues: int = 200,
                         repeats: int = 3, objectives: tuple[str, ...] = tuple(COMPRESSORS)) -> dict:
    """Chapter 8: the JGA, slot accuracy and slots lost against k of the shipped compressor of each of
    ``objectives`` on the first ``dialogues`` test dialogues, beside uncompressed PID; then PID over
    the whole memory and over k vectors (the first objective's compressor) at U prompts of b
    documents, timed end to end and in the decoding phase with the cost model's ratio beside it, and
    the memories' bytes, per batch and for :data:`KEPT_DOCUMENTS` documents kept encoded."""
    for objective in objectives:
        check_choice("objectives", objective, list(COMPRESSORS))
    model, tokenizer = zoo.load("pid-t5-tiny", device)
    split = zoo.test_split("pid-t5-tiny").select(range(dialogues))
    compressors = {objective: load_compressor(COMPRESSORS[objective], model) for objective in objectives}
    result = {"experiment": "compression", "setup": describe(device, model.dtype, model="pid-t5-tiny"),
              "pid": evaluate(lambda docs, prompts: pid_generate(model, tokenizer, docs, prompts), split)}
    print(result["setup"])
    print(f"uncompressed PID on {dialogues} test dialogues: JGA {result['pid']['jga']:.3f}, slot accuracy "
          f"{result['pid']['slot_accuracy']:.4f}")
    for objective, compressor in compressors.items():
        rows = quality_by_k(model, tokenizer, compressor, split, ks)
        result[objective] = {"quality": rows, "slots_lost": slots_lost(rows)}
        print(f"{COMPRESSORS[objective]}: " + ", ".join(f"k={r['k']} JGA {r['jga']:.3f}/{r['slot_accuracy']:.3f}"
                                                       for r in rows))
        print("  slots lost first (largest k below 95% accuracy): "
              + ", ".join(f"{slot} at {k}" for slot, k in result[objective]["slots_lost"][:6]))
    documents = list(split["dialogue"][:b])
    result["timed"] = [memory_row(model, tokenizer, compressors[objectives[0]], documents, U=U, k=k, repeats=repeats)
                       for k in timed_ks]
    for row in result["timed"]:
        print(f"U={U} b={b} k={row['k']:2d} (n_s {row['n_s']}): decoding phase PID "
              f"{row['pid_decoding_s'] * 1e3:6.1f} ms, "
              f"compressed {row['compressed_decoding_s'] * 1e3:6.1f} ms, {row['decoding_speedup']:.2f}x (bytes a step "
              f"{row['predicted_step_ratio']:.2f}x); end to end {row['speedup']:.2f}x | memory "
              f"{row['pid_memory_bytes'] / 2**20:.2f} MB -> {row['compressed_memory_bytes'] / 2**20:.3f} MB")
    n_s = round(sum(len(ids) for ids in tokenizer(list(split["dialogue"]))["input_ids"]) / dialogues)
    kept = {"n_s": n_s, "uncompressed": memory_held(b=KEPT_DOCUMENTS, n_memory=n_s, **memory_shape(model))}
    kept |= {f"k={k}": memory_held(b=KEPT_DOCUMENTS, n_memory=k, **memory_shape(model)) for k in ks}
    result["kept_documents"] = kept
    print(f"{KEPT_DOCUMENTS:,} documents kept encoded (cross-attention K/V, float32): uncompressed (mean n_s {n_s}) "
          f"{kept['uncompressed'] / 2**30:.2f} GiB; " + ", ".join(f"k={k} {kept[f'k={k}'] / 2**20:.0f} MiB"
                                                                 for k in timed_ks))
    return result
