"""Medusa (chapter 6): the tree's mask and positions against each path run as its own sequence, the
cache after a round, greedy equality with the target (b = 1 and batched, ``</s>`` inside an accepted
branch, the length limit), typical acceptance's two ends, the tree builder, training, bad input."""
import itertools

import pytest
import torch

from pidutils import medusa, sequential, t5, zoo
from pidutils.models import random_t5

SMALL = dict(initializer_factor=1.0, vocab_size=6, num_layers=1, d_model=32, d_ff=64, d_kv=8, num_heads=4)
EXACT = torch.float64  # random models' logits reach about 1000: in float64 a tree pass and a path alone agree exactly


def memory_of(model, source):
    return t5.encoded_memory(model, source, torch.ones_like(source))


def random_heads(model, *, k, seed=0, scale=0.3):
    torch.manual_seed(seed)
    heads = medusa.Heads.for_target(model, k=k)
    with torch.no_grad():
        heads.w1.normal_(0, scale)
    return heads.eval()


PAD = -1  # random models make token 0 too: a padding no model makes keeps the comparison unambiguous


def greedy_reference(model, memory, *, max_new_tokens):
    return t5.trim(sequential.sequential_decode(model, memory, pad=PAD, max_new_tokens=max_new_tokens), PAD)


# --- The tree: layout, mask and positions ---------------------------------------------------------------

def test_tree_layout_indexes_parents_depths_and_branches():
    layout = medusa.tree_layout(((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)), device="cpu")
    assert layout.depth.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert layout.parent.tolist() == [0, 0, 0, 1, 1, 2, 3]
    assert layout.head.tolist() == [0, 0, 1, 1, 1, 2] and layout.rank.tolist() == [0, 1, 0, 1, 0, 0]
    assert layout.branch[6].tolist() == [0, 1, 3, 6] and layout.branch[5].tolist() == [0, 2, 5, 5]
    assert layout.top_k == 2
    # node (1, 0) sees the root, (1,) and itself, nothing else
    assert layout.ancestors[5].nonzero().flatten().tolist() == [0, 2, 5]


@pytest.mark.parametrize("rows", [1, 3])
def test_each_node_sees_exactly_its_ancestors_and_the_prefix(rows):
    """The slow reference: each node's branch run as its own sequence after the prefix, no cache."""
    model = random_t5("t5-tiny", seed=1, dtype=EXACT)
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    memory = memory_of(model, torch.randint(2, vocab, (rows, 9)))
    prefix = torch.randint(2, vocab, (rows, 5))
    prefix[:, 0] = 0
    tree = medusa.cartesian_tree(depth=3, top_k=2) + ((2,), (2, 0))
    layout = medusa.tree_layout(tree, device="cpu")
    ids = torch.randint(2, vocab, (rows, layout.nodes))
    table = t5.bias_table(model)
    cache = t5.KVCache.empty(model, rows, 64)
    with torch.inference_mode():
        valid = torch.ones_like(prefix, dtype=torch.bool)
        t5.decoder_forward(model, prefix, memory, t5.causal_bias(table, 0, 5, valid), cache)
        tree_logits = t5.decoder_forward(model, ids, memory, medusa.tree_bias(table, layout, 5), cache)
        for node in range(layout.nodes):
            path = layout.ancestors[node].nonzero().flatten()  # ascending: the root first, the node last
            sequence = torch.cat([prefix, ids[:, path]], 1)
            full = torch.ones_like(sequence, dtype=torch.bool)
            alone = t5.decoder_forward(model, sequence, memory, t5.causal_bias(table, 0, sequence.shape[1], full))
            torch.testing.assert_close(tree_logits[:, node], alone[:, -1], atol=1e-9, rtol=1e-9)


def test_the_cache_after_a_round_is_that_of_the_accepted_tokens_one_at_a_time():
    model = random_t5("t5-tiny", seed=2, dtype=EXACT)
    rows, vocab = 2, model.config.vocab_size
    memory = memory_of(model, torch.randint(2, vocab, (rows, 7)))
    layout = medusa.tree_layout(medusa.cartesian_tree(depth=3, top_k=3), device="cpu")
    table = t5.bias_table(model)
    ids = torch.randint(2, vocab, (rows, layout.nodes))
    prefix = torch.zeros((rows, 1), dtype=torch.long)
    with torch.inference_mode():
        cache = t5.KVCache.empty(model, rows, 64)
        t5.decoder_forward(model, prefix, memory, t5.causal_bias(table, 0, 1, torch.ones_like(prefix, dtype=torch.bool)),
                           cache)
        t5.decoder_forward(model, ids, memory, medusa.tree_bias(table, layout, 1), cache)
        branch = layout.branch[torch.tensor([11, 5])][:, :3]  # each row keeps its root and two nodes under it
        cache.keep(1, branch)
        assert cache.length == 4
        one_at_a_time = t5.KVCache.empty(model, rows, 64)
        sequence = torch.cat([prefix, ids.gather(1, branch)], 1)
        for i in range(sequence.shape[1]):
            valid = torch.ones((rows, i + 1), dtype=torch.bool)
            t5.decoder_forward(model, sequence[:, i:i + 1], memory, t5.causal_bias(table, i, 1, valid), one_at_a_time)
    for kept, alone in zip(cache.keys + cache.values, one_at_a_time.keys + one_at_a_time.values):
        torch.testing.assert_close(kept[:, :, :4], alone[:, :, :4], atol=1e-9, rtol=1e-9)


# --- Greedy acceptance: the target's own tokens ------------------------------------------------------------

TREES = [((0,),), medusa.cartesian_tree(depth=2, top_k=2), medusa.cartesian_tree(depth=3, top_k=3),
         ((0,), (1,), (0, 0), (0, 0, 0), (1, 0), (0, 1), (0, 0, 0, 0))]


@pytest.mark.parametrize("tree", TREES, ids=lambda t: f"{len(t)}nodes")
@pytest.mark.parametrize("rows", [1, 4])
def test_greedy_medusa_makes_the_targets_greedy_tokens(tree, rows):
    for seed in range(3):
        model = random_t5("t5-tiny", seed=seed, dtype=EXACT, **SMALL)
        heads = random_heads(model, k=4, seed=seed)
        torch.manual_seed(seed)
        memory = memory_of(model, torch.randint(2, 6, (rows, 8)))
        expected = greedy_reference(model, memory, max_new_tokens=40)
        got, stats = medusa.medusa_decode(model, heads, memory, tree=tree, max_new_tokens=40, pad=PAD)
        assert torch.equal(got, expected)
        assert stats.passes == len(stats.depths) + 1


def test_eos_inside_an_accepted_branch_and_the_length_limit():
    """A tree of every token at both depths always stands 2 deep, and a small vocabulary makes ``</s>``
    common, so branches that stand past it occur; every output still ends where the target's does,
    and a limit cuts a round's branch short."""
    stood_past_eos = 0
    for vocab, seed in itertools.product((8, 16), range(4)):
        model = random_t5("t5-tiny", seed=seed, dtype=EXACT, vocab_size=vocab)
        heads = random_heads(model, k=2, seed=seed)
        torch.manual_seed(seed)
        memory = memory_of(model, torch.randint(2, vocab, (3, 8)))
        for limit in (1, 2, 5, 13):
            expected = t5.trim(sequential.sequential_decode(model, memory, pad=0, max_new_tokens=limit), 0)
            got, stats = medusa.medusa_decode(model, heads, memory, tree=medusa.cartesian_tree(depth=2, top_k=vocab),
                                              max_new_tokens=limit, pad=0)
            assert torch.equal(got, expected) and got.shape[1] <= limit
            assert all(a == 2 for rnd in stats.depths for a in rnd)
            stood_past_eos += sum(1 for rnd in stats.branches for branch in rnd if 1 in branch[:-1])
    assert stood_past_eos > 0


@pytest.mark.parametrize("name", ["medusa-seq-t5-deep", "medusa2-seq-t5-deep"])
def test_greedy_medusa_on_the_shipped_target_and_heads(name):
    model, tokenizer = zoo.load_body(name)  # Medusa-1: seq-t5-deep itself; Medusa-2: the body trained with it
    heads = medusa.load_heads(name)
    documents = list(zoo.test_split("seq-t5-deep")["dialogue"][:6])
    expected = sequential.sequential_generate_ids(model, tokenizer, documents)
    tree = medusa.shipped_tree(name, size=24)
    for rows in (1, 3):
        got = [medusa.medusa_generate_ids(model, heads, tokenizer, documents[i:i + rows], tree=tree)
               for i in range(0, len(documents), rows)]
        for (ids, stats), i in zip(got, range(0, len(documents), rows)):
            assert torch.equal(ids, t5.trim(expected[i:i + rows], 0))
            assert sum(map(sum, stats.depths)) > len(stats.depths)  # the heads do guess: more than a token a pass


# --- Typical acceptance ----------------------------------------------------------------------------------

def test_typical_acceptance_at_its_two_ends():
    torch.manual_seed(0)
    layout = medusa.tree_layout(medusa.cartesian_tree(depth=2, top_k=3), device="cpu")
    logits = torch.randn(4, layout.nodes, 7)
    ids = torch.randint(0, 7, (4, layout.nodes))
    everything = medusa.stands(ids, logits, layout, medusa.Typical(epsilon=0.0, delta=0.3))
    assert everything.all()  # ε = 0: every token has p(x) > 0
    greedy = medusa.stands(ids, logits, layout, None)
    assert not greedy.all()
    only_argmax = medusa.stands(ids, logits, layout, medusa.Typical(epsilon=1e6, delta=1e6))
    assert torch.equal(only_argmax, greedy)  # the threshold is above 1: only the argmax stands


def test_typical_with_a_high_threshold_is_greedy_and_with_none_accepts_every_guess():
    model = random_t5("t5-tiny", seed=4, dtype=EXACT, **SMALL)
    heads = random_heads(model, k=3, seed=4)
    memory = memory_of(model, torch.randint(2, 6, (2, 8)))
    tree = medusa.cartesian_tree(depth=3, top_k=2)
    greedy, _ = medusa.medusa_decode(model, heads, memory, tree=tree, max_new_tokens=30, pad=PAD)
    strict, _ = medusa.medusa_decode(model, heads, memory, tree=tree, max_new_tokens=30, pad=PAD,
                                     typical=medusa.Typical(epsilon=1e6, delta=1e6))
    assert torch.equal(strict, greedy)
    _, loose = medusa.medusa_decode(model, heads, memory, tree=tree, max_new_tokens=30, pad=PAD,
                                    typical=medusa.Typical(epsilon=0.0, delta=0.0))
    full = [a for rnd in loose.depths[:-1] for a in rnd]  # every round but the last, cut by the limit or </s>
    assert full and all(a == 3 for a in full)


# --- The tree builder and the prediction ------------------------------------------------------------------

def closed_trees(acc, size):
    """Every tree of ``size`` nodes whose nodes have their parent and their lower-ranked sibling."""
    nodes = [p for d in range(1, len(acc) + 1) for p in itertools.product(range(len(acc[0])), repeat=d)]
    for subset in itertools.combinations(nodes, size):
        chosen = set(subset)
        if all((len(p) == 1 or p[:-1] in chosen) and (p[-1] == 0 or p[:-1] + (p[-1] - 1,) in chosen) for p in chosen):
            yield tuple(sorted(chosen, key=lambda p: (len(p), p)))


@pytest.mark.parametrize("acc", [[[0.7, 0.2, 0.05], [0.5, 0.25, 0.1], [0.35, 0.2, 0.1]],
                                 [[0.5, 0.3, 0.01], [0.9, 0.05, 0.04], [0.2, 0.19, 0.18]]])
def test_the_accuracy_tree_is_the_best_tree_of_its_size(acc):
    """Accuracies falling with rank: the grown tree is the best of every tree of its size whose nodes
    have their parent and lower-ranked sibling (and no other tree can do better: the best nodes are
    such a tree)."""
    for size in range(1, 7):
        tree = medusa.accuracy_tree(acc, size=size)
        assert len(tree) == size and medusa.check_tree(tree, heads=3) == tree
        best = max(medusa.expected_tokens(t, acc) for t in closed_trees(acc, size))
        assert medusa.expected_tokens(tree, acc) == pytest.approx(best)


def test_expected_tokens_is_the_root_plus_the_chance_of_each_node():
    acc = [[0.5, 0.25], [0.4, 0.1]]
    assert medusa.expected_tokens(((0,), (1,), (0, 0)), acc) == pytest.approx(1 + 0.5 + 0.25 + 0.5 * 0.4)
    assert medusa.cartesian_tree(depth=2, top_k=2) == ((0,), (1,), (0, 0), (0, 1), (1, 0), (1, 1))


# --- Training ------------------------------------------------------------------------------------------

def test_fresh_heads_start_as_the_targets_lm_head_and_learn():
    model = random_t5("t5-tiny", seed=5, dtype=EXACT)
    heads = medusa.Heads.for_target(model, k=2)
    states = torch.randn(16, model.config.d_model, dtype=EXACT)
    torch.testing.assert_close(heads(states)[:, 1], t5.lm_logits(model, states))
    labels = torch.randint(0, model.config.vocab_size, (1, 17))
    y = medusa.head_labels(labels, 2)[0]
    assert torch.equal(y[:15, 0], labels[0, 1:16]) and torch.equal(y[:15, 1], labels[0, 2:17])
    assert y[-1].tolist() == [-100, -100] and y[-2, 1] == -100
    optimizer = torch.optim.Adam(heads.parameters(), lr=1e-2)
    first = medusa.medusa_loss(heads, states, y[:16]).item()
    for _ in range(30):
        loss = medusa.medusa_loss(heads, states, y[:16])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 2
    acc = medusa.accuracies(heads, states, y[:16], top=3)
    assert len(acc) == 2 and all(0 <= a <= 1 for row in acc for a in row)


def test_the_loss_weighs_head_k_by_decay_to_the_k():
    model = random_t5("t5-tiny", seed=6, dtype=EXACT)
    heads = medusa.Heads.for_target(model, k=3)
    states = torch.randn(8, model.config.d_model, dtype=EXACT)
    labels = torch.randint(0, model.config.vocab_size, (8, 3))
    logits = heads(states)
    parts = [torch.nn.functional.cross_entropy(logits[:, i], labels[:, i]) for i in range(3)]
    expected = 0.8 * parts[0] + 0.64 * parts[1] + 0.512 * parts[2]
    torch.testing.assert_close(medusa.medusa_loss(heads, states, labels), expected)


def seq2seq_batch_of(model, *, rows=3, source=7, target=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, model.config.vocab_size, (rows, source), generator=generator)
    labels = torch.randint(2, model.config.vocab_size, (rows, target), generator=generator)
    labels[0, -3:] = -100  # a shorter row, padded as Hugging Face pads labels
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def medusa1_loss_of(model, heads, batch):
    """L_MEDUSA-1 of ``heads`` on ``model``'s teacher-forced states, the engine's way."""
    states, labels = medusa.teacher_forced_states(model, batch)
    real = labels != -100
    return medusa.medusa_loss(heads, states[real], medusa.head_labels(labels, heads.k)[real])


def test_medusa2_loss_is_the_lm_loss_plus_lambda0_times_medusa1():
    model = random_t5("t5-tiny", seed=8, dtype=EXACT)
    heads = random_heads(model, k=3, seed=1)
    batch = seq2seq_batch_of(model)
    heads_loss = medusa1_loss_of(model, heads, batch)
    with torch.no_grad():
        torch.testing.assert_close(medusa.medusa2_loss(model, heads, batch, lambda0=0.0), model(**batch).loss)
        torch.testing.assert_close(medusa.medusa2_loss(model, heads, batch, lambda0=0.3),
                                   model(**batch).loss + 0.3 * heads_loss)


def test_self_distilled_medusa2_loss_is_the_kl_to_the_teacher_plus_lambda0_times_medusa1():
    model, teacher = random_t5("t5-tiny", seed=8, dtype=EXACT), random_t5("t5-tiny", seed=3, dtype=EXACT)
    heads = random_heads(model, k=3, seed=1)
    batch = seq2seq_batch_of(model)
    heads_loss, real = medusa1_loss_of(model, heads, batch), batch["labels"] != -100
    with torch.no_grad():
        log_p = teacher(**batch).logits[real].log_softmax(-1)  # Hugging Face's own forward
        log_q = model(**batch).logits[real].log_softmax(-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
        torch.testing.assert_close(medusa.medusa2_loss(model, heads, batch, lambda0=0.4, teacher=teacher),
                                   kl + 0.4 * heads_loss)
        torch.testing.assert_close(medusa.medusa2_loss(model, heads, batch, lambda0=0.4, teacher=model),
                                   0.4 * heads_loss)  # a body distilled from itself has nothing to learn


def test_heads_past_a_short_answer_have_no_labels_and_add_nothing():
    labels = torch.tensor([[4, 5, 1, -100], [6, 7, 8, 1]])
    shifted = medusa.head_labels(labels, 5)  # more heads than tokens: the deep ones see only padding
    assert shifted.shape == (2, 4, 5)
    assert shifted[1, 0].tolist() == [7, 8, 1, -100, -100] and (shifted[:, :, 4] == -100).all()
    model = random_t5("t5-tiny", seed=8, dtype=EXACT)
    heads = random_heads(model, k=5, seed=1)
    real = labels != -100
    states = torch.randn(int(real.sum()), model.config.d_model, dtype=EXACT)
    three = random_heads(model, k=3, seed=1)
    three.load_state_dict({"w1": heads.w1[:3], "w2": heads.w2[:3]})
    torch.testing.assert_close(medusa.medusa_loss(heads, states, shifted[real]),  # heads 4 and 5: no labels
                               medusa.medusa_loss(three, states, shifted[real][:, :3]))


def test_medusa2_trains_the_body_through_the_heads():
    model = random_t5("t5-tiny", seed=9, dtype=EXACT)
    heads = random_heads(model, k=2, seed=2)
    batch = seq2seq_batch_of(model, seed=1)
    body, head = {}, {}
    for lambda0 in (0.0, 1.0):
        model.zero_grad(set_to_none=False), heads.zero_grad(set_to_none=False)
        medusa.medusa2_loss(model, heads, batch, lambda0=lambda0).backward()
        body[lambda0] = model.get_decoder().final_layer_norm.weight.grad.clone()
        head[lambda0] = heads.w1.grad.abs().max().item()
    assert head[0.0] == 0 and head[1.0] > 0  # λ_0 = 0 is the body's own loss alone
    assert not torch.allclose(body[0.0], body[1.0])  # the heads' loss reaches the body


def test_a_medusa2_body_loads_as_its_targets_architecture():
    target, tokenizer = zoo.load("seq-t5-deep")
    body, body_tokenizer = zoo.load("medusa2-seq-t5-deep")
    assert body.dtype == torch.float32 and body_tokenizer.get_vocab() == tokenizer.get_vocab()
    same = ("d_model", "num_layers", "num_decoder_layers", "num_heads", "vocab_size")
    assert all(getattr(body.config, key) == getattr(target.config, key) for key in same)
    medusa.check_heads(body, medusa.load_heads("medusa2-seq-t5-deep"))
    assert not torch.equal(body.lm_head.weight, target.lm_head.weight)  # the body was trained too
    assert zoo.load_body("medusa-seq-t5-deep")[0].config.num_decoder_layers == 16  # Medusa-1: the frozen target


def test_the_shipped_heads_report_their_accuracies():
    report = medusa.heads_report("medusa-seq-t5-deep")
    assert report["target"] == "seq-t5-deep" and report["recipe"]["decay"] == 0.8
    heads = medusa.load_heads("medusa-seq-t5-deep")
    assert len(report["test_accuracy"]) == heads.k
    for acc in report["test_accuracy"]:
        assert sum(acc) <= 1 + 1e-9 and acc[0] > acc[1]  # disjoint events: one rank at most is right
    assert report["test_accuracy"][0][0] > report["test_accuracy"][-1][0]  # further ahead is harder


# --- Bad input --------------------------------------------------------------------------------------------

def test_bad_input_is_a_value_error_naming_the_parameter():
    model = random_t5("t5-tiny", seed=7, dtype=EXACT, **SMALL)
    heads = random_heads(model, k=2)
    memory = memory_of(model, torch.randint(2, 6, (1, 5)))
    with pytest.raises(ValueError, match="k must"):
        medusa.Heads(k=0, d_model=32, vocab_size=6)
    with pytest.raises(ValueError, match="top_k must"):
        medusa.cartesian_tree(depth=2, top_k=0)
    with pytest.raises(ValueError, match="depth must"):
        medusa.cartesian_tree(depth=0, top_k=2)
    with pytest.raises(ValueError, match="size must"):
        medusa.accuracy_tree([[0.5]], size=0)
    with pytest.raises(ValueError, match="tree must be at most 2 deep"):
        medusa.medusa_decode(model, heads, memory, tree=medusa.cartesian_tree(depth=3, top_k=1), pad=0)
    with pytest.raises(ValueError, match="tree must fit in the KV cache"):
        medusa.medusa_decode(model, heads, memory, tree=medusa.cartesian_tree(depth=2, top_k=4), pad=0,
                             max_new_tokens=10, capacity=20)
    with pytest.raises(ValueError, match="tree must list each path once, after its parent"):
        medusa.medusa_decode(model, heads, memory, tree=((0, 0),), pad=0)
    for tree in ((), [0, 1], "0"):
        with pytest.raises(ValueError, match="tree must be a non-empty"):
            medusa.medusa_decode(model, heads, memory, tree=tree, pad=0)
    other = random_t5("t5-tiny", seed=7, **(SMALL | {"vocab_size": 9}))
    with pytest.raises(ValueError, match="heads must be trained for this target"):
        medusa.medusa_decode(other, heads, memory_of(other, torch.randint(2, 6, (1, 5))), tree=((0,),), pad=0)
    wider = random_t5("t5-tiny", seed=7, **(SMALL | {"d_model": 48}))
    with pytest.raises(ValueError, match="heads must be trained for this target"):
        medusa.check_heads(wider, heads)
    with pytest.raises(ValueError, match="epsilon must"):
        medusa.Typical(epsilon=-0.1)
    with pytest.raises(ValueError, match="max_new_tokens must"):
        medusa.medusa_decode(model, heads, memory, tree=((0,),), pad=0, max_new_tokens=0)
