"""How each shipped checkpoint is trained: data, tokenizer, model, loop, evaluation (chapter 2)."""
from __future__ import annotations

from ..checks import check_int
from ..cost import training_flops
from ..data import SLOTS, make_dataset
from ..metrics import evaluate
from ..models import count_parameters
from ..pie import pie_batches, pie_generate
from ..tokenizer import train_tokenizer
from ..train import train
from . import RECIPES, new_model


def train_checkpoint(name: str, steps: int | None = None):
    """Train the named checkpoint from scratch; return (model, tokenizer, report dict)."""
    recipe = RECIPES[name]
    steps = check_int("steps", steps, 1) if steps is not None else recipe.steps
    data = make_dataset(train=recipe.train_dialogues, seed=recipe.seed)
    tokenizer = train_tokenizer(list(data["train"]["dialogue"]) + [" ".join(SLOTS)] * 10,
                                recipe.vocab_size)
    model = new_model(recipe, len(tokenizer))
    enc_params = count_parameters(model.get_encoder().block)
    dec_params = count_parameters(model.get_decoder().block) + model.lm_head.weight.numel()

    def predict(documents, prompts):
        return pie_generate(model, tokenizer, documents, prompts)

    def batch_flops(batch: dict) -> float:
        return training_flops(enc_params, dec_params, int(batch["attention_mask"].sum()),
                              int((batch["labels"] != -100).sum()))

    validation = data["validation"].select(range(50))
    run = train(model, pie_batches(data["train"], tokenizer, recipe.batch_size), batch_flops, steps,
                lr=recipe.lr, warmup=recipe.warmup, seed=recipe.seed,
                validate=lambda m: evaluate(predict, validation), validate_every=500)
    result = {"name": name, "steps": steps, "wall_seconds": run.wall_seconds, "train_flops": run.flops,
              "final_loss": run.final_loss, "validation": run.validation,
              "test": evaluate(predict, data["test"])}
    return model, tokenizer, result
