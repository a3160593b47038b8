"""Every figure the book quotes from a paper, once, with its source (chapters 2 to 6).

A :class:`Quote` is a figure as its paper prints it, what it measures, where it is (table,
figure or section), and the setting it was measured in (model, data, hardware). The source
texts are the ones in the book's ``shared/seeds`` folder; a figure is added here only after it
was found there, or, where the seeds give none (Medusa's speed-ups and defaults), in the paper's
own repository, which ``where`` then names. Chapters draw every paper column from :data:`QUOTES` through
:func:`comparison`, so a figure is corrected in one place (``tests/test_papers.py`` checks that
the chapters do).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .checks import check_choice
from .tables import Table


@dataclass(frozen=True)
class Quote:
    """One figure from a paper: its value as printed, what it is, where, and measured how."""

    value: str
    what: str
    source: str  # the bibliography key in book/references.bib
    where: str  # "Table 3", "§4.3", "Figure 4"
    setting: str  # model, data and hardware, as the paper states them ("not stated" where it does not)

    @property
    def reference(self) -> str:
        """Where the figure is and what it was measured on: ``"Table 3; T5-base, MultiWOZ 2.4, A100"``."""
        return f"{PAPERS[self.source]}, {self.where}; {self.setting}"


PAPERS = {"lu2024encode": "Lu et al. 2024", "huang2025pipelined": "Huang et al. 2025",
          "leviathan2023fast": "Leviathan et al. 2023", "cai2024medusa": "Cai et al. 2024",
          "juravsky2024hydragen": "Juravsky et al. 2024", "ye2024cascade": "Ye et al. 2024",
          "wingate2022prompt": "Wingate et al. 2022", "chevalier2023adapting": "Chevalier et al. 2023"}

_PID_A100 = "T5-base, MultiWOZ 2.4, U = 30, NVIDIA A100"
_PIPE_4090 = "one RTX 4090, batch 1"
_PIPE_TABLE5 = (f"WikiHowQA test set, backbone not stated (its Δt = 1 row is Table 4's T5-Base); "
                f"{_PIPE_4090} (§4.3)")
_SPEC = "T5-XXL (11B) target, T5-small draft; batch size and hardware not stated in the slides"

QUOTES: dict[str, Quote] = {
    # --- Lu et al. 2024, PID (chapters 2 and 3) ---------------------------------------------------
    "pid.flops": Quote("0.1×", "PID's inference FLOPs over PIE's (counted with calflops, §4.2)", "lu2024encode",
                       "Table 3", "T5-base, MultiWOZ 2.4 (512 test instances, §4.2), U = 30"),
    "pid.speedup": Quote("1.9×", "PID's speed-up over PIE, one instance", "lu2024encode", "Table 3", _PID_A100),
    "pid.speedup_batched": Quote("4.6×", "PID's speed-up over PIE, batched at the optimal batch size",
                                 "lu2024encode", "Table 3", _PID_A100),
    "pid.jga_pie": Quote("76.3", "PIE-T5-base's joint goal accuracy (%)", "lu2024encode", "Table 3",
                         "T5-base, MultiWOZ 2.4 test set, U = 30"),
    "pid.jga_pid": Quote("75.5", "PID-T5-base's joint goal accuracy (%)", "lu2024encode", "Table 3",
                         "T5-base, MultiWOZ 2.4 test set, U = 30"),
    "pid.latency_pie": Quote("146 ms", "PIE-T5-base's latency per instance (a dialogue history), instances "
                             "one at a time (§4.2)", "lu2024encode", "Table 6", _PID_A100),
    "pid.latency_pid": Quote("78 ms", "PID-T5-base's latency per instance (a dialogue history), instances "
                             "one at a time (§4.2)", "lu2024encode", "Table 6", _PID_A100),
    "pid.t5_base_params": Quote("220M", "T5-base's parameters", "lu2024encode", "Table 2 (caption)", "T5-base"),
    "pid.train_flops_pie": Quote("5.0e18", "PIE-T5-base's training FLOPs", "lu2024encode", "Table 5",
                                 "T5-base, MultiWOZ 2.4"),
    "pid.train_flops_pid": Quote("1.2e17", "PID-T5-base's training FLOPs", "lu2024encode", "Table 5",
                                 "T5-base, MultiWOZ 2.4"),
    "pid.input_tokens": Quote("289 ± 108", "MultiWOZ 2.4 input length (T5 tokens)", "lu2024encode", "Table 9",
                              "MultiWOZ 2.4, Hugging Face T5 tokenizer"),
    "pid.output_tokens": Quote("56 ± 26", "MultiWOZ 2.4 output length, the whole state (T5 tokens)",
                               "lu2024encode", "Table 9", "MultiWOZ 2.4, Hugging Face T5 tokenizer"),
    "pid.max_output_tokens": Quote("24", "PID-T5's maximum output length per prompt (one slot value, tokens)",
                                   "lu2024encode", "Table 10", "MultiWOZ 2.4, PID-T5-base and -large"),
    "pid.max_prompt_tokens": Quote("8", "PID-T5's maximum prompt length (tokens)", "lu2024encode", "Table 10",
                                   "MultiWOZ 2.4, PID-T5-base and -large"),
    "pid.speedup_2080ti": Quote("2.3×", "PID's speed-up over PIE, one instance (209 vs 91 ms)", "lu2024encode",
                                "Table 6", "T5-base, MultiWOZ 2.4, NVIDIA RTX 2080Ti"),
    "pid.train_hours_pie": Quote("about 46 GPU hours", "training PIE-T5-base", "lu2024encode", "Appendix B",
                                 "MultiWOZ 2.4, one NVIDIA A40"),
    "pid.train_hours_pid": Quote("about 5 GPU hours", "training PID-T5-base", "lu2024encode", "Appendix B",
                                 "MultiWOZ 2.4, one NVIDIA A40"),
    # --- Huang et al. 2025, pipelined decoding (chapter 4) -------------------------------------------
    "pipe.msqa_speedup": Quote("1.7×", "pipelined over sequential throughput, MSQA", "huang2025pipelined",
                               "Table 2", f"MSQA, T5-Base (T5-Large too), {_PIPE_4090}"),
    "pipe.kp20k_speedup": Quote("2.0×", "pipelined over sequential throughput, KP20K", "huang2025pipelined",
                                "Table 3", f"KP20K, T5-Base (T5-Large too), {_PIPE_4090}"),
    "pipe.pubmed_speedup": Quote("7.0×", "pipelined over sequential throughput, PubMed", "huang2025pipelined",
                                 "Table 4", f"PubMed, T5-Large, {_PIPE_4090}"),
    "pipe.kp20k_f1": Quote("33.7 → 27.8", "KP20K present-keyphrase F1@5, sequential → pipelined",
                           "huang2025pipelined", "Table 3", f"KP20K, T5-Base, {_PIPE_4090}"),
    "pipe.wikihow_subsequences": Quote("1.8× → 5.1×", "speed-up from 2 to 9 subsequences, WikiHowQA",
                                       "huang2025pipelined", "Figure 4 and §5.3",
                                       f"WikiHowQA, backbone not stated; {_PIPE_4090} (§4.3)"),
    "pipe.msqa_em": Quote("72.3 → 71.5", "MSQA test exact-match F1, sequential → pipelined",
                          "huang2025pipelined", "Table 2", f"MSQA test set, T5-Base, {_PIPE_4090}"),
    "pipe.msqa_memory": Quote("1,802 M → 1,798 M", "GPU memory, sequential → pipelined, MSQA",
                              "huang2025pipelined", "Table 2", f"MSQA, T5-Base, {_PIPE_4090}"),
    "pipe.phrase_subsequences": Quote("2.9 of 3.0 words (MSQA), 5.3 of 2.0 (KP20K)",
                                      "subsequences per target, and words per subsequence, phrase-level data",
                                      "huang2025pipelined", "Table 1", "dataset statistics"),
    "pipe.delta_t_rouge": Quote("34.6 / 34.8 / 34.7", "WikiHowQA test Rouge-L at Δt = 1 / 2 / 3",
                                "huang2025pipelined", "Table 5", _PIPE_TABLE5),
    "pipe.delta_t_throughput": Quote("4.6 / 4.4 / 4.3", "WikiHowQA examples per second at Δt = 1 / 2 / 3",
                                     "huang2025pipelined", "Table 5", _PIPE_TABLE5),
    # --- Leviathan et al. 2023, speculative decoding, from the lecture slides (chapter 5) -------------
    "spec.ende_greedy": Quote("γ = 7: α 0.75, 3.4×", "EnDe translation, T = 0", "leviathan2023fast",
                              "Table 2 (slides)", _SPEC),
    "spec.ende_sampled": Quote("γ = 7: α 0.62, 2.6×", "EnDe translation, T = 1", "leviathan2023fast",
                               "Table 2 (slides)", _SPEC),
    "spec.cnndm_greedy": Quote("γ = 5: α 0.65, 3.1×", "CNN/DM summarisation, T = 0", "leviathan2023fast",
                               "Table 2 (slides)", _SPEC),
    "spec.cnndm_sampled": Quote("γ = 5: α 0.53, 2.3×", "CNN/DM summarisation, T = 1", "leviathan2023fast",
                                "Table 2 (slides)", _SPEC),
    "spec.alpha_unigram": Quote("0.03 to 0.13", "α of unigram drafts", "leviathan2023fast", "α table (slides)",
                                "GPT-like 97M and T5-XXL targets, T = 0 and 1"),
    "spec.alpha_bigram": Quote("0.05 to 0.23", "α of bigram drafts", "leviathan2023fast", "α table (slides)",
                               "GPT-like 97M and T5-XXL targets, T = 0 and 1"),
    "spec.alpha_t5": Quote("0.53 to 0.82", "α of T5-small, -base and -large drafts", "leviathan2023fast",
                           "α table (slides)", "T5-XXL targets, EnDe and CNN/DM, T = 0 and 1"),
    "spec.alpha_gpt": Quote("0.88 and 0.89", "α of a 6M GPT-like draft at T = 0 and T = 1", "leviathan2023fast",
                            "α table (slides)", "GPT-like 97M target"),
    # --- Cai et al. 2024, Medusa (chapter 6): the slides give its formulas; the figures are its repository's
    "medusa.speedup": Quote("2.2–3.6×", "speed-up over the original model, Medusa-1 and Medusa-2 together",
                            "cai2024medusa", "FasterDecoding/Medusa README (2024/1 news)",
                            "a range of LLMs (Vicuna and others); hardware not stated there"),
    "medusa.batch1": Quote("about 2×", "Medusa-1 (v0.1) speed-up at batch size 1", "cai2024medusa",
                           "FasterDecoding/Medusa README (introduction)",
                           "Vicuna models, batch size 1; hardware not stated there"),
    "medusa.typical": Quote("ε 0.09, δ 0.3", "typical acceptance's posterior_threshold and posterior_alpha",
                            "cai2024medusa", "medusa_generate's defaults (FasterDecoding/Medusa)",
                            "the repository's default for every model"),
    "medusa.decay": Quote("λ_k = 0.8^k", "the weight of head k in L_MEDUSA-1", "cai2024medusa",
                          "training (slides)", "Medusa-1: heads on a frozen body"),
    "medusa.lambda0": Quote("gradually increase λ_0", "the heads' weight in L_MEDUSA-2 = L_LM + λ_0 L_MEDUSA-1",
                            "cai2024medusa", "training (slides)", "Medusa-2: the body and the heads together"),
    # --- Shared prefixes in decoder-only serving (chapter 7): not in the seeds; each quote names its source
    "hydragen.throughput": Quote("up to 32×", "end-to-end throughput of shared-prefix attention over vLLM",
                                 "juravsky2024hydragen", "abstract (arXiv 2402.05099)",
                                 "CodeLlama-13b, long shared prefixes, large batches; growing with both"),
    "cascade.speedup": Quote("up to 31×", "cascade (shared-prefix) batch decode attention over vLLM's PagedAttention",
                             "ye2024cascade", "FlashInfer blog, \"Cascade Inference\" (2024-02-02)",
                             "the attention operator alone, one H100 SXM 80GB"),
    # --- Prompt compression (chapter 8): the lecture slides on Wingate et al. and AutoCompressors
    "wingate.retained": Quote("falls as the prompt is compressed harder", "information a soft prompt keeps of its "
                              "hard prompt (each token's likelihood scaled: hard prompt 1, no prompt 0)",
                              "wingate2022prompt", "Figure 4 (slides)", "GPT-2 models, reconstructing the passage"),
    "autocompressor.context": Quote("6,144 tokens in 50 × 3 = 150 summary vectors",
                                    "context an AutoCompressor reads as summary vectors", "chevalier2023adapting",
                                    "Table 1 (slides)", "OPT-2.7B"),
    "autocompressor.perplexity": Quote("5.93 against 6.28 (−5.6%)",
                                       "held-out perplexity in domain, 6,144 context tokens as summary vectors "
                                       "against the fine-tuned OPT without context", "chevalier2023adapting",
                                       "Table 1 (slides)", "OPT-2.7B"),
    "autocompressor.fused": Quote("1.7×", "throughput of fused summaries (top-10 passages of 512 tokens as 50 summary "
                                  "vectors each) over REPLUG top-2 with the 512-token passages, at a better perplexity "
                                  "gain (3.74% against 2.24%)", "chevalier2023adapting", "Table 5 (slides)",
                                  "OPT-2.7B, one NVIDIA A100, no batching"),
}

PAPER_CLASS = "paper"  # the HTML class of a comparison's paper column, which tests read


def quote(key: str) -> Quote:
    """The figure stored under ``key``."""
    return QUOTES[check_choice("key", key, sorted(QUOTES))]


def comparison(rows: Sequence[tuple[str, str, str]], *, caption: str = "") -> Table:
    """A paper-vs-book table: each row is (what, a :data:`QUOTES` key or "" for none, the book's figure).

    The paper column and the source column come from :data:`QUOTES`; a row with no key shows "–".
    """
    body = []
    for what, key, ours in rows:
        q = quote(key) if key else None
        body.append((what, q.value if q else "–", q.reference if q else "", ours))
    return Table(("", "paper", "where, measured on", "this book"), body, caption=caption,
                 classes=("", PAPER_CLASS, "", "book"))
