"""A synthetic, MultiWOZ-like dialogue-state-tracking set, made offline from a seed (chapter 2).

MultiWOZ 2.4 (the PID paper's main task) asks 30 domain-slot questions of one dialogue. Neither it
nor a real T5 can be downloaded in CI, so the book generates its own faithful, small version:
5 domains and the same 30 domain-slot names (the prompts Z_u); multi-turn user/system dialogues
that mention values, change them ("actually, make it 5 people"), say "dontcare", accept a value
the system offers, and carry values across domains ("a taxi to the restaurant"); values of 1-4
tokens, and "none" for slots never mentioned. The three views the book needs are
:func:`pie_view` (X + Z_u -> Y_u), :func:`pid_view` (X; Z_1..Z_U -> Y_1..Y_U) and
:func:`full_state_view` (X -> the subsequences "slot : value").
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset, DatasetDict

from .checks import check_choice, check_int, check_text

NONE, DONTCARE = "none", "dontcare"
SEPARATOR = " : "  # after a prompt: "Z_u : X" (PIE), "Z_u :" (PID's decoder prefix), "slot : value"
SEQUENTIAL_SEPARATOR = " , "  # between subsequences when the whole state is one sequence

AREAS = ["north", "south", "east", "west", "centre"]
PRICES = ["cheap", "moderate", "expensive"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
PEOPLE = [str(n) for n in range(1, 9)]
TIMES = [f"{h:02d}:{m:02d}" for h in range(7, 22) for m in (0, 15, 30, 45)]
PLACES = ["cambridge", "london kings cross", "stansted airport", "peterborough", "ely",
          "norwich", "bishops stortford", "leicester", "birmingham new street", "stevenage"]
HOTELS = ["acorn guest house", "the lensfield hotel", "alexander bed and breakfast", "city centre north",
          "hamilton lodge", "the gonville hotel", "allenbell", "warkworth house", "huntingdon marriott hotel",
          "avalon", "the cambridge belfry", "express by holiday inn"]
RESTAURANTS = ["pizza hut city centre", "the golden curry", "curry garden", "la margherita", "nandos",
               "the copper kettle", "yippee noodle bar", "the nirala", "frankie and bennys", "golden wok",
               "restaurant one seven", "the cow pizza kitchen"]
ATTRACTIONS = ["kings college", "the fitzwilliam museum", "cherry hinton water play", "saint johns college",
               "the cambridge corn exchange", "byard art", "williams art and antiques", "abbey pool",
               "the place", "scott polar museum", "clare hall", "wandlebury country park"]
FOODS = ["italian", "indian", "chinese", "british", "modern european", "thai", "gastropub", "european",
         "north american", "mediterranean", "portuguese", "turkish"]
ATTRACTION_TYPES = ["museum", "college", "park", "swimming pool", "architecture", "theatre",
                    "nightclub", "cinema", "boat", "entertainment"]

# The 30 domain-slot names of MultiWOZ 2.4 and the values each can take.
SLOT_VALUES: dict[str, list[str]] = {
    "hotel-pricerange": PRICES, "hotel-type": ["hotel", "guesthouse"], "hotel-parking": ["yes", "no"],
    "hotel-book stay": [str(n) for n in range(1, 8)], "hotel-book day": DAYS, "hotel-book people": PEOPLE,
    "hotel-area": AREAS, "hotel-stars": [str(n) for n in range(0, 6)], "hotel-internet": ["yes", "no"],
    "hotel-name": HOTELS,
    "train-destination": PLACES, "train-day": DAYS, "train-departure": PLACES, "train-arriveby": TIMES,
    "train-book people": PEOPLE, "train-leaveat": TIMES,
    "attraction-area": AREAS, "attraction-name": ATTRACTIONS, "attraction-type": ATTRACTION_TYPES,
    "restaurant-food": FOODS, "restaurant-pricerange": PRICES, "restaurant-area": AREAS,
    "restaurant-name": RESTAURANTS, "restaurant-book time": TIMES, "restaurant-book day": DAYS,
    "restaurant-book people": PEOPLE,
    "taxi-leaveat": TIMES, "taxi-destination": PLACES + RESTAURANTS + HOTELS + ATTRACTIONS,
    "taxi-departure": PLACES + RESTAURANTS + HOTELS + ATTRACTIONS, "taxi-arriveby": TIMES,
}
SLOTS: list[str] = list(SLOT_VALUES)
MAX_WORDS = 440  # dialogues stay well under the tiny models' 512-token limit
DOMAINS = ["hotel", "restaurant", "train", "attraction", "taxi"]

# How a user mentions a value; {v} is the value.
PHRASES: dict[str, list[str]] = {
    "pricerange": ["in the {v} price range", "something {v}", "it should be {v}"],
    "area": ["in the {v}", "located in the {v} of town", "somewhere in the {v}"],
    "parking": ["{v} on the parking", "parking: {v}"],
    "internet": ["{v} on the wifi", "internet: {v}"],
    "stars": ["with {v} stars", "rated {v} stars"],
    "type": ["it should be a {v}", "a {v} please", "i am after a {v}"],
    "book stay": ["for {v} nights", "staying {v} nights"],
    "book day": ["starting on {v}", "on {v}", "for {v}"],
    "book people": ["for {v} people", "there will be {v} of us", "a party of {v}"],
    "book time": ["at {v}", "a table at {v}"],
    "name": ["it is called {v}", "the one called {v}", "i want {v}"],
    "food": ["serving {v} food", "some {v} food", "{v} cuisine"],
    "destination": ["going to {v}", "to {v}", "heading to {v}"],
    "departure": ["from {v}", "departing from {v}", "leaving from {v}"],
    "day": ["on {v}", "travelling on {v}"],
    "leaveat": ["leaving after {v}", "departing after {v}"],
    "arriveby": ["arriving by {v}", "to get there by {v}"],
}
# Where a slot word is shared by domains, users name the domain with it, as MultiWOZ users mostly do
# ("a table for 4", "a taxi to ..."): these phrases override PHRASES for those slots.
DOMAIN_PHRASES: dict[str, list[str]] = {
    "hotel-pricerange": ["a {v} hotel", "the hotel should be {v}"],
    "restaurant-pricerange": ["a {v} restaurant", "the restaurant should be {v}"],
    "hotel-area": ["a hotel in the {v}", "staying in the {v}"],
    "restaurant-area": ["a restaurant in the {v}", "eating in the {v}"],
    "attraction-area": ["an attraction in the {v}", "something to see in the {v}"],
    "hotel-book day": ["checking in on {v}", "a room from {v}"],
    "restaurant-book day": ["a table on {v}", "dinner on {v}"],
    "train-day": ["a train on {v}", "travelling by train on {v}"],
    "hotel-book people": ["a room for {v} people", "{v} hotel guests"],
    "restaurant-book people": ["a table for {v} people", "dinner for {v} people"],
    "train-book people": ["{v} train tickets", "train tickets for {v} people"],
    "train-leaveat": ["a train leaving after {v}", "the train should leave after {v}"],
    "taxi-leaveat": ["a taxi leaving after {v}", "pick me up after {v}"],
    "train-arriveby": ["a train arriving by {v}", "the train should arrive by {v}"],
    "taxi-arriveby": ["the taxi should arrive by {v}", "get me there by {v}"],
    "train-departure": ["a train from {v}", "the train departs from {v}"],
    "taxi-departure": ["pick me up from {v}", "a taxi from {v}"],
    "train-destination": ["a train to {v}", "the train goes to {v}"],
    "taxi-destination": ["a taxi to {v}", "drop me at {v}"],
}
DONTCARE_PHRASES = ["any {s} is fine", "i do not care about the {s}", "the {s} does not matter"]
DONTCARE_OK = {"pricerange", "area", "parking", "internet", "stars", "type", "food"}
OPENERS = {
    "hotel": ["i am looking for a place to stay", "i need a hotel", "can you help me find lodging"],
    "restaurant": ["i am looking for a restaurant", "i want somewhere to eat", "find me a restaurant"],
    "train": ["i need a train", "i am looking for a train", "can you find me a train"],
    "attraction": ["i want to visit an attraction", "what is there to see", "i am looking for something to do"],
    "taxi": ["i need a taxi", "please book me a taxi", "can you get me a taxi"],
}
SYSTEM_REPLIES = [
    "sure , i can help with that .", "i have several options for you .", "let me check that for you .",
    "is there anything else you would like ?", "what else can i help you with ?", "okay , noted .",
    "there are a few matching your request .", "great choice .", "anything else i can do ?",
]
# Turns that carry no value: real dialogues are mostly these.
SMALL_TALK = [
    ("user : i am not sure yet , let me think about it for a moment .",
     "system : of course , take your time . i am here whenever you are ready ."),
    ("user : can you tell me a little more about the options you have ?",
     "system : there are several good places that people usually like , depending on what you need ."),
    ("user : i am visiting cambridge for the first time and i want everything to go smoothly .",
     "system : welcome ! i will make sure all of your bookings are in order ."),
    ("user : is it usually busy at this time of the year ?",
     "system : it can be quite busy , so booking ahead is a good idea ."),
    ("user : could you also send me the reference number later ?",
     "system : yes , you will receive the reference number once everything is booked ."),
    ("user : my friends recommended your service , they said you were very helpful .",
     "system : thank you , that is very kind of them . how else can i help you today ?"),
]
# Values a later domain can take from an earlier one ("a taxi to the restaurant").
CARRIES = [
    ("taxi-destination", "restaurant-name", "to the restaurant"),
    ("taxi-destination", "hotel-name", "to my hotel"),
    ("taxi-departure", "attraction-name", "from the attraction"),
    ("train-day", "hotel-book day", "on the same day as the hotel"),
    ("train-book people", "restaurant-book people", "for the same group of people"),
    ("restaurant-area", "hotel-area", "in the same area as the hotel"),
]


def _slot_word(slot: str) -> str:
    return slot.split("-", 1)[1]


def _mention(rng: random.Random, slot: str, value: str) -> str:
    word = _slot_word(slot)
    if value == DONTCARE:
        domain = slot.split("-", 1)[0]
        return rng.choice(DONTCARE_PHRASES).format(s=f"{domain} {word.replace('pricerange', 'price')}")
    return rng.choice(DOMAIN_PHRASES.get(slot, PHRASES[word])).format(v=value)


def _domain_turns(rng: random.Random, domain: str, state: dict[str, str], carried: set[str]) -> list[str]:
    """The user/system turns about one domain; fills ``state`` with what the user asked for.

    ``carried`` collects the slots a value was carried from or to, which later turns leave unchanged.
    """
    slots = [s for s in SLOTS if s.startswith(domain + "-")]
    carries = [c for c in CARRIES if c[0].startswith(domain + "-") and c[1] in state
               and state[c[1]] not in (NONE, DONTCARE)]
    chosen = rng.sample(slots, k=rng.randint(2, min(5, len(slots))))
    mentions: list[str] = []
    for target, source, phrase in carries:
        if target not in carried and rng.random() < 0.7:  # one carry per slot
            state[target] = state[source]
            carried.update((target, source))
            mentions.append(phrase)
            chosen = [s for s in chosen if s != target]
    offered: str | None = None
    for slot in chosen:
        if _slot_word(slot) == "name" and rng.random() < 0.4:
            offered = slot  # the system will offer a name later, and the user accepts it
            continue
        value = DONTCARE if _slot_word(slot) in DONTCARE_OK and rng.random() < 0.12 \
            else rng.choice(SLOT_VALUES[slot])
        state[slot] = value
        mentions.append(_mention(rng, slot, value))
    rng.shuffle(mentions)
    turns = []
    opener = rng.choice(OPENERS[domain])
    while mentions or opener:
        k = rng.randint(1, 3)
        said = " , ".join(mentions[:k])
        mentions = mentions[k:]
        turns.append(f"user : {opener + ' ' if opener else ''}{said} .".replace("  ", " "))
        turns.append(f"system : {rng.choice(SYSTEM_REPLIES)}")
        opener = ""
    if offered:
        value = rng.choice(SLOT_VALUES[offered])
        state[offered] = value
        turns[-1] = f"system : how about {value} ? it matches what you asked for ."
        turns += [f"user : {rng.choice(['yes , that sounds good', 'great , please book it', 'that works'])} .",
                  f"system : {rng.choice(SYSTEM_REPLIES)}"]
    return turns


def _change_turns(rng: random.Random, state: dict[str, str], carried: set[str]) -> list[str]:
    """A late change of mind: "actually, make it 5 people" (never of a carried value, whose meaning
    "the same day as the hotel" a change would make ambiguous)."""
    changeable = [s for s, v in state.items()
                  if v not in (NONE, DONTCARE) and _slot_word(s) != "name" and s not in carried]
    if not changeable or rng.random() < 0.6:
        return []
    slot = rng.choice(changeable)
    new = rng.choice([v for v in SLOT_VALUES[slot] if v != state[slot]])
    state[slot] = new
    domain, word = slot.split("-", 1)
    phrase = _mention(rng, slot, new)
    return [f"user : actually , for the {domain} , change that : {phrase} .",
            f"system : i have updated your {domain} request ."]


def make_dialogue(seed: int) -> dict:
    """One dialogue and its final state (every one of the 30 slots, "none" if never mentioned)."""
    rng = random.Random(seed)
    domains = rng.sample(DOMAINS, k=rng.choice([1, 2, 2, 3, 3]))
    domains.sort(key=lambda d: d == "taxi")  # a taxi usually comes last, to carry a place
    state: dict[str, str] = {}
    carried: set[str] = set()
    turns: list[str] = []
    for domain in domains:
        turns += _domain_turns(rng, domain, state, carried)
        for exchange in rng.sample(SMALL_TALK, k=rng.randint(2, 4)):
            if sum(len(t.split()) for t in turns) < MAX_WORDS - 60:  # stay within the model's limit
                turns += list(exchange)
    turns += _change_turns(rng, state, carried)
    turns.append(f"user : {rng.choice(['thank you , that is all', 'thanks , goodbye', 'that is everything'])} .")
    return {"dialogue": " ".join(turns), "slots": SLOTS,
            "values": [state.get(s, NONE) for s in SLOTS]}


SPLITS = ("train", "validation", "test")
TEST_SEEDS = 9_000_000  # the test dialogues' seeds start here, so the test split is one for every training size


def make_split(split: str, train: int = 3000, validation: int = 200, test: int = 200, seed: int = 0) -> Dataset:
    """One split of :func:`make_dataset`, made without the others (each dialogue has its own seed).

    Training dialogues take seeds from ``seed * 10_000_000``, validation ones follow them, and test
    ones start at :data:`TEST_SEEDS` past it: a model trained on more dialogues is tested on the same ones.
    """
    check_choice("split", split, SPLITS)
    sizes = {"train": check_int("train", train, 1, TEST_SEEDS // 2),
             "validation": check_int("validation", validation, 1, TEST_SEEDS // 2),
             "test": check_int("test", test, 1, 1_000_000)}
    check_int("seed", seed, 0)
    first = seed * 10_000_000 + {"train": 0, "validation": train, "test": TEST_SEEDS}[split]
    rows = [make_dialogue(first + i) for i in range(sizes[split])]
    return Dataset.from_list([{"id": f"{split}-{i}", **r} for i, r in enumerate(rows)])


def make_dataset(train: int = 3000, validation: int = 200, test: int = 200, seed: int = 0) -> DatasetDict:
    """The whole set as a ``DatasetDict``, the same for the same sizes and seed."""
    return DatasetDict({s: make_split(s, train, validation, test, seed) for s in SPLITS})


def pie_source(prompt: str, document: str) -> str:
    """PIE's encoder input X + Z_u: the prompt, then the document."""
    check_text("prompt", prompt)
    check_text("document", document)
    return f"{prompt}{SEPARATOR}{document}"


def pid_prefix(prompt: str) -> str:
    """PID's decoder prefix Z_u after the start token: the prompt and the separator, "Z_u :" (chapter 3)."""
    check_text("prompt", prompt)
    return f"{prompt}{SEPARATOR}".rstrip()


def pie_view(split: Dataset) -> Dataset:
    """PIE: one row per (dialogue, slot): source X + Z_u, target Y_u."""
    return Dataset.from_list([
        {"id": row["id"], "prompt": s, "source": pie_source(s, row["dialogue"]), "target": v}
        for row in split for s, v in zip(row["slots"], row["values"])])


def pid_view(split: Dataset) -> Dataset:
    """PID: one row per dialogue: document X, prompts Z_1..Z_U, targets Y_1..Y_U."""
    return Dataset.from_list([{"id": r["id"], "document": r["dialogue"], "prompts": r["slots"],
                               "targets": r["values"]} for r in split])


def state_subsequence(slot: str, value: str) -> str:
    """One subsequence of the full state: "slot : value" (the tokenizer knows ':' but not '=')."""
    return f"{slot}{SEPARATOR}{value}"


def full_state_view(split: Dataset) -> Dataset:
    """Full state: X -> the subsequences "slot : value" of the slots that are not "none", in slot order."""
    return Dataset.from_list([{"id": r["id"], "document": r["dialogue"],
                               "subsequences": [state_subsequence(s, v) for s, v in zip(r["slots"], r["values"])
                                                if v != NONE]}
                              for r in split])


def sequential_target(subsequences: Sequence[str]) -> str:
    """The whole state as one sequence: the subsequences joined by :data:`SEQUENTIAL_SEPARATOR` (chapter 4)."""
    return SEQUENTIAL_SEPARATOR.join(subsequences)


def split_sequential(text: str) -> list[str]:
    """The inverse of :func:`sequential_target`: one generated sequence cut into its subsequences."""
    return [s.strip() for s in text.split(SEQUENTIAL_SEPARATOR.strip()) if s.strip()]


def parse_state(subsequences: Sequence[str], slots: Sequence[str] = SLOTS) -> list[str]:
    """The value of each of ``slots`` in generated "slot : value" subsequences; "none" if unmentioned.

    A subsequence that names no known slot is ignored; a slot named twice keeps its first value.
    Chapter 4 scores the full-state decoders with it (joint goal accuracy).
    """
    state: dict[str, str] = {}
    for text in subsequences:
        slot, sep, value = text.strip().partition(SEPARATOR.strip())
        slot, value = slot.strip(), value.strip()
        if sep and slot in SLOTS and value:
            state.setdefault(slot, value)
    return [state.get(s, NONE) for s in slots]
