"""Built-in tasks: IOI, factual recall (capitals), greater-than, induction, balanced parentheses.

Value lists are chosen so answers are single tokens for the bundled SmolLM2 tokenizer (checked in
tests); other tokenizers get the usual validation errors naming the values to drop.
"""

from __future__ import annotations

from .spec import TaskSpec

NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "David", "Emma", "James", "Anna", "Paul",
         "Laura", "Mark", "Kate", "Tom", "Lisa", "Peter", "Rachel", "Michael", "Jessica", "Daniel"]
PLACES = ["store", "park", "school", "office", "station", "market"]
OBJECTS = ["drink", "book", "ring", "bag", "letter", "ball"]

IOI = {
    "name": "ioi",
    "description": "Indirect object identification (Wang et al. 2022): 'When Mary and John went to the store, "
                   "John gave a drink to' -> ' Mary'. Both name orders (ABB, BAB).",
    "variables": {
        "IO": {"values": NAMES, "description": "indirect object: the name that appears once"},
        "S": {"values": NAMES, "description": "subject: the name that appears twice"},
        "order": {"values": ["ABB", "BAB"], "description": "ABB: IO named first; BAB: S named first"},
        "place": {"values": PLACES},
        "object": {"values": OBJECTS},
    },
    "mechanisms": {
        "first": {"expr": "IO if order == 'ABB' else S"},
        "second": {"expr": "S if order == 'ABB' else IO"},
    },
    "constraints": ["IO != S"],
    "templates": [
        "When {first} and {second} went to the {place}, {S} gave a {object} to",
        "After {first} and {second} arrived at the {place}, {S} handed a {object} to",
    ],
    "answer": " {IO}",
    "counterfactuals": [
        {"name": "s2_swap", "kind": "assign",
         "assign": {"IO": "S", "S": "IO", "order": "'BAB' if order == 'ABB' else 'ABB'"},
         "description": "the second mention of the subject becomes the IO name: only the S2 token changes, "
                        "and the answer becomes the other name"},
        {"name": "swap_names", "kind": "swap", "variables": ["IO", "S"],
         "description": "exchange IO and S everywhere (all three name tokens change)"},
        {"name": "resample_names", "kind": "resample", "variables": ["IO", "S"],
         "description": "fresh names for IO and S"},
        {"name": "resample_io", "kind": "resample", "variables": ["IO"],
         "description": "a fresh IO name (S kept)"},
    ],
    "positions": {
        "IO": {"variable": "IO", "occurrence": 0},
        "S1": {"variable": "S", "occurrence": 0},
        "S2": {"variable": "S", "occurrence": 1},
    },
    "metric": "logit_diff",
    "default_n": 32,
}

CAPITALS = {"France": "Paris", "Italy": "Rome", "England": "London", "Germany": "Berlin",
            "Spain": "Madrid", "Japan": "Tokyo", "Russia": "Moscow", "Egypt": "Cairo",
            "Greece": "Athens", "Ireland": "Dublin", "Portugal": "Lisbon", "China": "Beijing",
            "Austria": "Vienna", "Poland": "Warsaw", "Norway": "Oslo", "Kenya": "Nairobi",
            "Canada": "Ottawa", "India": "Delhi", "Cuba": "Havana", "Peru": "Lima", "Sweden": "Stockholm",
            "Iran": "Tehran", "Korea": "Seoul", "Denmark": "Copenhagen", "Finland": "Helsinki",
            "Hungary": "Budapest", "Belgium": "Brussels"}

CAPITALS_TASK = {
    "name": "capitals",
    "description": "Factual recall: 'The capital of France is' -> ' Paris'.",
    "variables": {"country": {"values": list(CAPITALS)}},
    "mechanisms": {"capital": {"lookup": CAPITALS, "key": "country"}},
    "templates": ["The capital of {country} is", "The capital city of {country} is"],
    "answer": " {capital}",
    "counterfactuals": [{"name": "resample_country", "kind": "resample", "variables": ["country"]}],
    "positions": {"COUNTRY": {"variable": "country"}},
    "metric": "logit_diff",
    "default_n": 16,
}

# SmolLM2 (like Llama) writes numbers one digit per token, so the decisive token after "17" is the
# tens digit: correct are digits above the start year's tens digit, wrong those below.
GREATER_THAN = {
    "name": "greater-than",
    "description": "Greater-than (Hanna et al. 2023), digit-tokenizer form: 'The war lasted from the year 1742 "
                   "to the year 17' -> a tens digit greater than 4. Metric: P(greater digits) - P(smaller digits).",
    "variables": {
        "tens": {"range": [1, 8], "description": "tens digit of the start year within the century"},
        "ones": {"range": [1, 9]},
        "noun": {"values": ["war", "dispute", "reign", "drought", "expedition", "conflict"]},
    },
    "mechanisms": {"yy": {"expr": "str(tens) + str(ones)"}, "next_tens": {"expr": "str(tens + 1)"}},
    "templates": ["The {noun} lasted from the year 17{yy} to the year 17"],
    "answer": "{next_tens}",
    "answer_set": {"candidates": [str(d) for d in range(10)], "good": "int(c) > tens", "bad": "int(c) < tens"},
    "counterfactuals": [{"name": "resample_tens", "kind": "resample", "variables": ["tens"]}],
    "positions": {"YEAR": {"variable": "yy", "token": "first"}},
    "metric": "prob_diff",
    "default_n": 32,
}

LETTERS = list("abcdefghijklmnopqrstuvwxyz")

INDUCTION = {
    "name": "induction",
    "description": "Induction on repeated random tokens (character-level toy models): 'abcdefabcde' -> 'f'.",
    "variables": {f"x{i}": {"values": LETTERS} for i in range(1, 7)},
    "constraints": ["distinct(x1, x2, x3, x4, x5, x6)"],
    "templates": ["{x1}{x2}{x3}{x4}{x5}{x6}{x1}{x2}{x3}{x4}{x5}"],
    "answer": "{x6}",
    "counterfactuals": [{"name": "resample_x6", "kind": "resample", "variables": ["x6"],
                         "description": "change the token that follows the repeated one: only position 5 changes"}],
    "positions": {"FIRST_X6": {"variable": "x6", "occurrence": 0}, "PREV_X5": {"variable": "x5", "occurrence": 1}},
    "metric": "logit_diff",
    "default_n": 64,
}

PARENS = {
    "name": "parens",
    "description": "Balanced parentheses classification (character-level toy models): '(()())=' -> 'y' if balanced.",
    "variables": {f"p{i}": {"values": ["(", ")"]} for i in range(1, 9)},
    "mechanisms": {
        "s": {"expr": "p1 + p2 + p3 + p4 + p5 + p6 + p7 + p8"},
        "label": {"expr": "'y' if balanced(s) else 'n'"},
    },
    "templates": ["{s}="],
    "answer": "{label}",
    "counterfactuals": [
        {"name": "resample_all", "kind": "resample_all", "changes_answer": False},
        {"name": "flip_first", "kind": "assign", "assign": {"p1": "')' if p1 == '(' else '('"},
         "changes_answer": False},
    ],
    "positions": {},
    "metric": "accuracy",
    "default_n": 64,
}

BUILTIN_TASKS: dict[str, TaskSpec] = {
    spec["name"]: TaskSpec.model_validate(spec) for spec in (IOI, CAPITALS_TASK, GREATER_THAN, INDUCTION, PARENS)
}
