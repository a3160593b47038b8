"""How each shipped checkpoint is trained: data, tokenizer, model, loop, evaluation (chapters 2 and 3).

``pie`` checkpoints learn from (Z_u : X -> Y_u) pairs, one encoding per prompt; ``pid`` checkpoints
encode each dialogue once and learn all its slots at once, prompts in the decoder, the loss on the
answers only. Both use the same data generator, tokenizer recipe, shape, loop and evaluation; each
recipe (:data:`pidutils.zoo.RECIPES`) sets its optimizer, its number of training dialogues, and
whether it fine-tunes another shipped checkpoint (``init``) instead of starting from a random model.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict


import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from ..batching import seq2seq_batch
from ..compression import Compressor, compressed_generate, compression_batches, compression_loss
from ..bench import describe
from ..checks import check_choice, check_int
from ..cost import training_flops
from ..data import DONTCARE, NONE, SLOTS, full_state_view, make_dataset, parse_state, sequential_target
from ..medusa import Heads, accuracies, head_labels, load_heads, medusa2_loss, medusa_loss, teacher_forced_states
from ..metrics import evaluate
from ..models import count_parameters, pick_device
from ..pid import pid_batches, pid_generate, pid_loss
from ..pie import pie_batches, pie_generate
from ..pipelined import pipelined_batches, pipelined_generate, pipelined_loss
from ..sequential import sequential_batches, sequential_generate
from ..shared_prefix import shared_prefix_batches, shared_prefix_generate, shared_prefix_loss
from ..tokenizer import train_tokenizer
from ..train import train
from . import (CAUSAL_RECIPES, COMPRESSOR_RECIPES, HEAD_RECIPES, RECIPES, HeadsRecipe, JointRecipe, load,
               new_causal_model, new_model)

# What a fine-tune shares with its init: the width (it may keep fewer encoder and decoder blocks, or
# add decoder blocks), and the data its tokenizer was trained on.
TRAINING_METHODS = ("pie", "pid", "seq", "pipe")  # Recipe.method: how a checkpoint learns
SHARED = ("d_model", "d_ff", "d_kv", "num_heads", "vocab_size", "train_dialogues", "seed")


def decoder_tokens(batch: dict) -> int:
    """Decoder tokens one training step processes (PIE: answer and ``</s>``; PID: prompt row tokens too;
    pipelined: every real token of the layout).

    PID rows are right-padded with the pad id, which is also the start token at position 0 of each row.
    """
    if "valid" in batch:
        return int(batch["valid"].sum())
    if "decoder_input_ids" not in batch:
        return int((batch["labels"] != -100).sum())
    ids = batch["decoder_input_ids"]
    return int((ids[:, 1:] != 0).sum()) + ids.shape[0]


def check_init(recipe: Recipe) -> None:
    """Raise ``ValueError`` unless ``recipe.init`` is empty or a shipped checkpoint sharing :data:`SHARED`.

    Sharing them makes the init's tokenizer the one this recipe would train (chapter 2).
    """
    if not recipe.init:
        return
    check_choice("init", recipe.init, sorted(RECIPES))
    init = RECIPES[recipe.init]
    differ = [k for k in SHARED if getattr(init, k) != getattr(recipe, k)]
    if differ:
        raise ValueError(f"init must name a checkpoint with the same {', '.join(SHARED)}; "
                         f"{recipe.init} differs in {', '.join(differ)}")
    if recipe.num_layers > init.num_layers:
        raise ValueError(f"num_layers must be at most the init's {init.num_layers}, got {recipe.num_layers}")


def initial_model(recipe: Recipe, dialogues: list[str]) -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerFast]:
    """The model and tokenizer a run starts from: a fresh tokenizer and random model, or ``recipe.init``'s."""
    check_init(recipe)
    if recipe.init:
        model, tokenizer = load(recipe.init)
        kept = truncated(model, recipe.num_layers, min(recipe.num_decoder_layers, model.config.num_decoder_layers))
        return deepened(kept, recipe.num_decoder_layers, recipe.seed), tokenizer
    tokenizer = train_tokenizer(dialogues + [" ".join(SLOTS + [NONE, DONTCARE])] * 10, recipe.vocab_size)
    return new_model(recipe, len(tokenizer)), tokenizer


def truncated(model: T5ForConditionalGeneration, num_layers: int, num_decoder_layers: int) -> T5ForConditionalGeneration:
    """``model`` keeping only its first ``num_layers`` encoder and ``num_decoder_layers`` decoder blocks (chapter 5).

    The first block of each stack holds T5's relative position bias, which every block uses, so it
    is always kept; so are the embeddings, the final layer norms and the LM head.
    """
    config = model.config
    if (num_layers, num_decoder_layers) == (config.num_layers, config.num_decoder_layers):
        return model
    shorter = T5ForConditionalGeneration(type(config).from_dict(
        config.to_dict() | {"num_layers": num_layers, "num_decoder_layers": num_decoder_layers}))
    depth = {"encoder": num_layers, "decoder": num_decoder_layers}
    state = {key: value for key, value in model.state_dict().items()
             if ".block." not in key or int(key.split(".block.")[1].split(".")[0]) < depth[key.split(".")[0]]}
    shorter.load_state_dict(state)
    return shorter.eval()


def deepened(model: T5ForConditionalGeneration, num_decoder_layers: int, seed: int = 0) -> T5ForConditionalGeneration:
    """``model`` with decoder blocks added after its own, each starting as the identity (chapter 5).

    The new blocks are initialised as T5 initialises any block (seeded), except that the output
    projections of their three sublayers (self-attention, cross-attention, feed-forward) are zero:
    every sublayer adds nothing to the residual stream, so the deepened model computes exactly what
    ``model`` did, and training grows the new blocks from there (a function-preserving growth).
    """
    added = num_decoder_layers - model.config.num_decoder_layers
    if added == 0:
        return model
    torch.manual_seed(seed)
    config = model.config.to_dict() | {"num_decoder_layers": num_decoder_layers}
    grown = T5ForConditionalGeneration(type(model.config).from_dict(config))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".block." in key for key in missing), (missing, unexpected)
    with torch.no_grad():
        for block in grown.get_decoder().block[-added:]:
            sa, ca, ff = block.layer
            for projection in (sa.SelfAttention.o, ca.EncDecAttention.o, ff.DenseReluDense.wo):
                projection.weight.zero_()
    return grown.eval()


def train_checkpoint(name: str, steps: int | None = None, device: str | None = None):
    """Train the named checkpoint on ``device`` (default: CUDA if present, else CPU): from a random
    model, or by fine-tuning the shipped checkpoint its recipe names as ``init``.

    Returns the model (on the CPU, in eval mode), its tokenizer and the report dict.
    """
    recipe = RECIPES[name]
    steps = check_int("steps", steps, 1) if steps is not None else recipe.steps
    check_init(recipe)  # before the data are made
    data = make_dataset(train=recipe.train_dialogues, seed=recipe.seed)
    model, tokenizer = initial_model(recipe, list(data["train"]["dialogue"]))
    device = pick_device(device)
    model = model.to(device)
    enc_params = count_parameters(model.get_encoder().block)
    dec_params = count_parameters(model.get_decoder().block) + model.lm_head.weight.numel()
    predict = predictor(recipe.method, model, tokenizer)

    def batch_flops(batch: dict) -> float:
        return training_flops(enc_params, dec_params, int(batch["attention_mask"].sum()), decoder_tokens(batch))

    batches, loss_fn = training_batches(recipe, data["train"], tokenizer, model)
    validation = data["validation"].select(range(50))
    run = train(model, batches, batch_flops, steps=steps, lr=recipe.lr, warmup=recipe.warmup, seed=recipe.seed,
                validate=lambda m: evaluate(predict, validation), validate_every=recipe.validate_every,
                loss_fn=loss_fn, optimizer=recipe.optimizer)
    result = {"name": name, "steps": steps, "wall_seconds": run.wall_seconds, "train_flops": run.flops,
              "final_loss": run.final_loss, "validation": run.validation,
              "test": evaluate(predict, data["test"]),
              "machine": f"{describe(device, torch.float32).split(' | ')[0]}, torch {torch.__version__}"}
    return model.cpu(), tokenizer, result


def predictor(method: str, model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast):
    """``predict(documents, prompts) -> values`` with the method's own decoder, for :func:`evaluate`.

    The full-state decoders (``seq``, ``pipe``; chapter 4) generate the whole state and read the
    prompted slots from it; the pipelined one decodes at Δt = 1.
    """
    check_choice("method", method, TRAINING_METHODS)
    if method in ("pie", "pid"):
        generate = pid_generate if method == "pid" else pie_generate
        return lambda documents, prompts: generate(model, tokenizer, documents, prompts)
    generate_states = pipelined_generate if method == "pipe" else sequential_generate

    def predict(documents: Sequence[str], prompts: Sequence[Sequence[str]]) -> list[list[str]]:
        states = generate_states(model, tokenizer, documents)
        return [parse_state(state, slots) for state, slots in zip(states, prompts)]
    return predict


def training_batches(recipe: Recipe, split, tokenizer: PreTrainedTokenizerFast, model: T5ForConditionalGeneration):
    """``(next_batch, loss_fn)`` for the recipe's method; ``loss_fn`` None means the model's own loss."""
    sizes = {"batch_size": recipe.batch_size, "curriculum": recipe.curriculum}
    if recipe.method == "pid":
        return pid_batches(split, tokenizer, model, **sizes), pid_loss
    if recipe.method == "pipe":
        return pipelined_batches(split, tokenizer, model, **sizes), pipelined_loss
    if recipe.method == "seq":
        return sequential_batches(split, tokenizer, **sizes), None
    return pie_batches(split, tokenizer, **sizes), None


# --- Chapter 7: a decoder-only model, trained from scratch -----------------------------------------

def train_causal(name: str, *, steps: int | None = None, device: str | None = None):
    """Train the named decoder-only checkpoint (chapter 7) from a random Llama-style model, or on from
    the shipped one its recipe names as ``init``, with its tokenizer's dialogues, every question of a
    dialogue a branch after the document. The test scores
    are measured on the weights rounded to float16, as they are shipped. Returns the model (CPU, eval,
    float32), its tokenizer and the report dict."""
    recipe = CAUSAL_RECIPES[check_choice("name", name, sorted(CAUSAL_RECIPES))]
    steps = check_int("steps", steps, 1) if steps is not None else recipe.steps
    data = make_dataset(train=recipe.train_dialogues, seed=recipe.seed)
    _, tokenizer = load(recipe.tokenizer)
    device = pick_device(device)
    model = (load(recipe.init)[0] if recipe.init else new_causal_model(recipe, len(tokenizer))).to(device)
    params = count_parameters(model.model.layers) + model.lm_head.weight.numel()

    def predict(documents: Sequence[str], prompts: Sequence[Sequence[str]]) -> list[list[str]]:
        answers = shared_prefix_generate(model, tokenizer, documents, prompts[0])
        return [a[:len(p)] for a, p in zip(answers, prompts)]

    batches = shared_prefix_batches(data["train"], tokenizer, batch_size=recipe.batch_size, curriculum=recipe.curriculum)
    run = train(model, batches, lambda batch: training_flops(0, params, 0, int(batch["valid"].sum())), steps=steps,
                lr=recipe.lr, warmup=recipe.warmup, seed=recipe.seed,
                validate=lambda m: evaluate(predict, data["validation"].select(range(50))),
                validate_every=recipe.validate_every, loss_fn=shared_prefix_loss, optimizer=recipe.optimizer)
    model = model.half().float().cpu().eval()
    result = {"name": name, "steps": steps, "wall_seconds": run.wall_seconds, "train_flops": run.flops,
              "final_loss": run.final_loss, "validation": run.validation, "test": evaluate(predict, data["test"]),
              "machine": f"{describe(device, torch.float32).split(' | ')[0]}, torch {torch.__version__}"}
    return model, tokenizer, result


# --- Chapter 6: Medusa-1 heads on a frozen target, Medusa-2 with its body ------------------------------

def target_states(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, split, *,
                  k: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A target's final hidden states at every labelled decoder position of ``split``'s full-state
    dialogues (n, d), and the K heads' labels there (n, K). Medusa-1 never changes the body, so it
    computes them once and trains on them; Medusa-2 measures its heads on its own body with them."""
    view = full_state_view(split)
    documents, targets = view["document"], [sequential_target(s) for s in view["subsequences"]]
    states, labels = [], []
    for i in range(0, len(documents), batch_size):
        h, y = teacher_forced_states(model, seq2seq_batch(tokenizer, documents[i:i + batch_size],
                                                          targets[i:i + batch_size]))
        real = y != -100
        states.append(h[real].cpu())
        labels.append(head_labels(y, k)[real].cpu())
    return torch.cat(states), torch.cat(labels)


def train_heads(name: str, *, epochs: int | None = None, device: str | None = None) -> tuple[Heads, dict]:
    """Train the named Medusa heads on their frozen target (chapter 6): L_MEDUSA-1 with λ_k = 0.8^k,
    Adam with a cosine schedule over shuffled positions. Returns the heads (CPU, eval) and a report:
    wall time, machine, the loss, and each head's top-i accuracies on the validation dialogues (the
    tree's calibration) and on the test dialogues."""
    recipe: HeadsRecipe = HEAD_RECIPES[check_choice("name", name, sorted(HEAD_RECIPES))]
    epochs = check_int("epochs", epochs, 1) if epochs is not None else recipe.epochs
    device = pick_device(device)
    target_recipe = RECIPES[recipe.target]
    model, tokenizer = load(recipe.target, device)
    started = time.perf_counter()
    data = make_dataset(train=recipe.train_dialogues, seed=target_recipe.seed)
    states, labels = target_states(model, tokenizer, data["train"], k=recipe.k)
    torch.manual_seed(recipe.seed)
    heads = Heads.for_target(model, k=recipe.k).train()
    steps = epochs * math.ceil(len(states) / recipe.batch_size)
    optimizer = torch.optim.Adam(heads.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for _ in range(epochs):
        for batch in torch.randperm(len(states)).split(recipe.batch_size):
            loss = medusa_loss(heads, states[batch].to(device), labels[batch].to(device), decay=recipe.decay)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    heads.eval()
    report = {"name": name, "target": recipe.target, "positions": len(states), "epochs": epochs, "steps": steps,
              "wall_seconds": time.perf_counter() - started, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
              "machine": f"{describe(device, torch.float32).split(' | ')[0]}, torch {torch.__version__}",
              "recipe": asdict(recipe)}
    report |= head_accuracies(model, tokenizer, heads, data, k=recipe.k)
    return heads.cpu(), report


class Joint(torch.nn.Module):
    """A body and its heads as one module, so that one optimizer trains both (Medusa-2)."""

    def __init__(self, body: T5ForConditionalGeneration, heads: Heads) -> None:
        super().__init__()
        self.body, self.heads = body, heads


def head_accuracies(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, heads: Heads,
                    data, *, k: int) -> dict[str, list[list[float]]]:
    """Each head's top-i accuracies on the validation dialogues (the tree's calibration) and the test ones."""
    report = {}
    with torch.inference_mode():
        for split in ("validation", "test"):
            s, y = target_states(model, tokenizer, data[split], k=k)
            report[f"{split}_accuracy"] = accuracies(heads, s.to(model.device), y.to(model.device))
    return report


def train_joint(name: str, *, steps: int | None = None, device: str | None = None
                ) -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerFast, Heads, dict]:
    """Train Medusa-2 (chapter 6): the target's body and its Medusa-1 heads together, on
    L_MEDUSA-2 = L_LM + λ_0 L_MEDUSA-1 with λ_0 ramped up from 0 (:class:`pidutils.zoo.JointRecipe`),
    on the target's training dialogues, L_LM distilled from the frozen target (or on the labels).

    The body changes, so the report re-checks its JGA on the test dialogues beside the heads'
    accuracies, both measured on the weights as shipped (rounded to float16). Returns the body, its
    tokenizer, the heads (CPU, eval) and the report.
    """
    recipe: JointRecipe = HEAD_RECIPES[check_choice("name", name, sorted(HEAD_RECIPES))]
    steps = check_int("steps", steps, 1) if steps is not None else recipe.steps
    device = pick_device(device)
    model, tokenizer = load(recipe.target, device)
    teacher = load(recipe.target, device)[0].requires_grad_(False) if recipe.distill else None
    heads = load_heads(recipe.heads, device=device)
    data = make_dataset(train=RECIPES[recipe.target].train_dialogues, seed=RECIPES[recipe.target].seed)
    predict = predictor("seq", model, tokenizer)
    step = itertools.count()  # train calls loss_fn once a step: the ramp's clock

    def loss_fn(joint: Joint, batch: dict) -> torch.Tensor:
        lambda0 = recipe.lambda0 * min(1.0, next(step) / recipe.ramp)
        return medusa2_loss(joint.body, joint.heads, batch, lambda0=lambda0, decay=recipe.decay, teacher=teacher)

    def validate(joint: Joint) -> dict:
        s, y = target_states(model, tokenizer, data["validation"].select(range(100)), k=heads.k)
        return evaluate(predict, data["validation"].select(range(50))) | {
            f"head{i + 1}_top1": acc[0] for i, acc in enumerate(accuracies(heads, s.to(device), y.to(device)))}

    batches = sequential_batches(data["train"], tokenizer, batch_size=recipe.batch_size)
    run = train(Joint(model, heads), batches, lambda batch: 0.0,  # FLOPs: not counted for Medusa's heads
                steps=steps, lr=recipe.lr, warmup=recipe.warmup, seed=recipe.seed, validate=validate,
                validate_every=recipe.validate_every, loss_fn=loss_fn, optimizer=recipe.optimizer)
    model, heads = model.half().float().eval(), heads.half().float().eval()  # as shipped, in float16
    report = {"name": name, "target": recipe.target, "steps": steps, "wall_seconds": run.wall_seconds,
              "final_loss": run.final_loss, "validation": run.validation, "test": evaluate(predict, data["test"]),
              "machine": f"{describe(device, torch.float32).split(' | ')[0]}, torch {torch.__version__}",
              "recipe": asdict(recipe)}
    report |= head_accuracies(model, tokenizer, heads, data, k=heads.k)
    return model.cpu(), tokenizer, heads.cpu(), report


# --- Chapter 8: a compressor for a frozen model ------------------------------------------------------

def train_compressor(name: str, *, steps: int | None = None, device: str | None = None) -> tuple[Compressor, dict]:
    """Train the named compressor (chapter 8): a copy of its base's encoder blocks and max_k summary
    vectors, on the base's training dialogues with k drawn per batch, the base frozen, the loss its
    recipe's objective. The report's test JGA at each of the recipe's ``test_k`` is measured on the
    weights as shipped (rounded to float16). Returns the compressor (CPU, eval) and the report."""
    recipe = COMPRESSOR_RECIPES[check_choice("name", name, sorted(COMPRESSOR_RECIPES))]
    steps = check_int("steps", steps, 1) if steps is not None else recipe.steps
    base = RECIPES[recipe.base]
    data = make_dataset(train=base.train_dialogues, seed=base.seed)
    device = pick_device(device)
    model, tokenizer = load(recipe.base, device)
    model.requires_grad_(False)
    compressor = Compressor(model, max_k=recipe.max_k, base=recipe.base, seed=recipe.seed)

    def scores(split, k: int) -> dict:
        return evaluate(lambda docs, prompts: compressed_generate(model, tokenizer, compressor, docs, prompts, k=k),
                        split)

    validation = data["validation"].select(range(50))
    batches = compression_batches(data["train"], tokenizer, model, min_k=recipe.min_k, max_k=recipe.max_k,
                                  batch_size=recipe.batch_size)
    run = train(compressor, batches, lambda batch: 0.0,  # FLOPs: not counted for a compressor
                steps=steps, lr=recipe.lr, warmup=recipe.warmup, seed=recipe.seed,
                validate=lambda c: {f"jga_k{k}": scores(validation, k)["jga"] for k in recipe.validate_k},
                validate_every=recipe.validate_every, optimizer=recipe.optimizer,
                loss_fn=lambda c, batch: compression_loss(model, c, batch, objective=recipe.objective))
    compressor = compressor.half().float().eval()  # as shipped, in float16
    report = {"name": name, "steps": steps, "wall_seconds": run.wall_seconds, "final_loss": run.final_loss,
              "validation": run.validation, "test": {str(k): scores(data["test"], k) for k in recipe.test_k},
              "machine": f"{describe(device, torch.float32).split(' | ')[0]}, torch {torch.__version__}",
              "recipe": asdict(recipe)}
    return compressor.cpu(), report
