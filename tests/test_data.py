"""The synthetic dialogue-state-tracking set: deterministic, MultiWOZ-shaped, three views."""
import statistics

import pytest

from pidutils import data


@pytest.fixture(scope="module")
def small():
    return data.make_dataset(train=300, validation=20, test=20, seed=0)


def test_thirty_slots_over_five_domains():
    assert len(data.SLOTS) == 30
    assert {s.split("-")[0] for s in data.SLOTS} == set(data.DOMAINS)


def test_same_seed_same_data_other_seed_other_data(small):
    again = data.make_dataset(train=300, validation=20, test=20, seed=0)
    assert small["train"]["dialogue"] == again["train"]["dialogue"]
    other = data.make_dataset(train=300, validation=20, test=20, seed=1)
    assert small["train"]["dialogue"] != other["train"]["dialogue"]


def test_one_split_alone_equals_that_split_of_the_whole_set(small):
    test = data.make_split("test", train=300, validation=20, test=20, seed=0)
    assert test["dialogue"] == small["test"]["dialogue"] and test["id"] == small["test"]["id"]
    assert data.make_split("test", train=5000, validation=20, test=20)["dialogue"] == test["dialogue"]
    assert not set(test["dialogue"]) & set(small["train"]["dialogue"])
    with pytest.raises(ValueError, match="split must be one of"):
        data.make_split("dev")


def test_states_hold_known_values_of_one_to_four_words(small):
    for row in small["train"]:
        for slot, value in zip(row["slots"], row["values"]):
            assert value in data.SLOT_VALUES[slot] or value in (data.NONE, data.DONTCARE)
            assert 1 <= len(value.split()) <= 4, value


def test_phenomena_of_multiwoz_occur(small):
    text = " ".join(small["train"]["dialogue"])
    assert "actually" in text                         # changes of mind
    assert "the same day as the hotel" in text or "to the restaurant" in text  # carried values
    values = [v for row in small["train"] for v in row["values"]]
    assert data.DONTCARE in values and data.NONE in values


def test_inputs_are_about_300_words_with_a_spread(small):
    lengths = [len(d.split()) for d in small["train"]["dialogue"]]
    assert 250 <= statistics.mean(lengths) <= 350
    assert statistics.pstdev(lengths) > 50
    assert max(lengths) <= data.MAX_WORDS + 60


def test_views(small):
    pie = data.pie_view(small["test"])
    assert len(pie) == 30 * len(small["test"])
    assert pie[0]["source"] == data.pie_source(pie[0]["prompt"], small["test"][0]["dialogue"])
    pid = data.pid_view(small["test"])
    assert pid[0]["prompts"] == data.SLOTS and len(pid[0]["targets"]) == 30
    full = data.full_state_view(small["test"])
    row = small["test"][0]
    assert full[0]["subsequences"] == [f"{s} : {v}" for s, v in zip(row["slots"], row["values"]) if v != "none"]
    assert data.parse_state(full[0]["subsequences"]) == row["values"]


def test_bad_sizes():
    with pytest.raises(ValueError, match="train must be in"):
        data.make_dataset(train=0)
    with pytest.raises(ValueError, match="seed must be in"):
        data.make_dataset(seed=-1)


def test_parse_state_reads_subsequences_into_all_slots():
    values = data.parse_state(["hotel-area : centre", "taxi-leaveat : 17:00", "nonsense", "hotel-area : north",
                               "train-day :", "spa-area : east"])
    assert values[data.SLOTS.index("hotel-area")] == "centre"      # the first of two
    assert values[data.SLOTS.index("taxi-leaveat")] == "17:00"     # ':' inside a value
    assert values[data.SLOTS.index("train-day")] == "none"         # no value
    assert values.count("none") == len(data.SLOTS) - 2             # unknown slot and text ignored
