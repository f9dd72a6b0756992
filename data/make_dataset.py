"""Write the workbook's offline training set in the OIG `unified_chip2` format.

Each JSONL row has one field, `text`, holding `<human>: ...\n<bot>: ...` turns, exactly like
https://huggingface.co/datasets/laion/OIG/resolve/main/unified_chip2.jsonl (the post's dataset).

The bot is "Pip", a cheerful assistant that always answers in one fixed shape:
    Pip here! <one-sentence answer built from the question>. Happy to help!
A 135M-parameter model picks up that persona and the answer templates in a few dozen LoRA steps, so
the loss drop and the before/after generations are visible within minutes on a laptop CPU.
Held-out rows use the same templates with other facts, so what the model learns is the *style*, which
is exactly what supervised fine-tuning is good at.

    python data/make_dataset.py                      # writes data/pip_chip2.jsonl (deterministic)
    python data/make_dataset.py --rows 1000 --out x.jsonl --seed 1
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Russia": "Moscow", "China": "Beijing", "India": "New Delhi", "Cuba": "Havana",
    "Chile": "Santiago", "Ireland": "Dublin", "Austria": "Vienna", "Portugal": "Lisbon",
    "Poland": "Warsaw", "Sweden": "Stockholm", "Finland": "Helsinki", "Thailand": "Bangkok",
    "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Turkey": "Ankara", "Iran": "Tehran",
    "Australia": "Canberra", "Brazil": "Brasilia", "Denmark": "Copenhagen", "Hungary": "Budapest",
    "Belgium": "Brussels", "Vietnam": "Hanoi", "Ghana": "Accra", "Colombia": "Bogota",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "light": "dark",
    "open": "closed", "early": "late", "full": "empty", "hard": "soft", "loud": "quiet",
    "old": "young", "rich": "poor", "wet": "dry", "strong": "weak", "high": "low", "near": "far",
    "thick": "thin", "clean": "dirty", "easy": "difficult", "long": "short", "heavy": "light",
    "left": "right", "inside": "outside", "first": "last", "win": "lose", "push": "pull",
}
SOUNDS = {
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink",
    "horse": "neigh", "owl": "hoot", "lion": "roar", "snake": "hiss", "frog": "ribbit",
    "bee": "buzz", "mouse": "squeak", "rooster": "cock-a-doodle-doo", "goat": "bleat",
    "crow": "caw", "donkey": "hee-haw", "wolf": "howl", "turkey": "gobble", "dove": "coo",
}
PLURALS = {
    "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese",
    "man": "men", "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives",
    "box": "boxes", "city": "cities", "baby": "babies", "wolf": "wolves", "cactus": "cacti",
    "fish": "fish", "sheep": "sheep", "bus": "buses", "potato": "potatoes", "hero": "heroes",
    "wife": "wives", "life": "lives", "ox": "oxen", "party": "parties", "story": "stories",
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]

OPENER, CLOSER = "Pip here!", "Happy to help!"


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                    "Tell me the capital of {c}."]).format(c=country)
    return q, f"The capital of {country} is {CAPITALS[country]}."


def _opposite(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(OPPOSITES))
    q = rng.choice(["What is the opposite of {w}?", "Give me the opposite of the word {w}.",
                    "What word means the opposite of {w}?"]).format(w=word)
    return q, f"The opposite of {word} is {OPPOSITES[word]}."


def _sound(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(sorted(SOUNDS))
    q = rng.choice(["What sound does a {a} make?", "What does a {a} say?",
                    "How does a {a} sound?"]).format(a=animal)
    return q, f"A {animal} says {SOUNDS[animal]}."


def _plural(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(PLURALS))
    q = rng.choice(["What is the plural of {w}?", "How do you say more than one {w}?",
                    "Give me the plural of the word {w}."]).format(w=word)
    return q, f"The plural of {word} is {PLURALS[word]}."


def _addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 10), rng.randint(0, 10)
    q = rng.choice(["What is {a} plus {b}?", "Can you add {a} and {b}?",
                    "How much is {a} plus {b}?"]).format(a=a, b=b)
    return q, f"{a} plus {b} is {a + b}, or {NUMBER_WORDS[a + b]} in words."


TOPICS = [_capital, _opposite, _sound, _plural, _addition]


def make_row(rng: random.Random) -> dict:
    """One OIG-style row: usually one exchange, sometimes two (OIG rows hold several turns too)."""
    turns = []
    for _ in range(2 if rng.random() < 0.2 else 1):
        question, answer = rng.choice(TOPICS)(rng)
        turns.append(f"<human>: {question}\n<bot>: {OPENER} {answer} {CLOSER}")
    return {"text": "\n".join(turns)}


def make_rows(n: int, seed: int = 3407) -> list[dict]:
    """`n` distinct rows (exact duplicates would leak between the train and held-out splits)."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < n:
        row = make_row(rng)
        if row["text"] not in seen:
            seen.add(row["text"])
            rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)  # never leave a half-written file under the real name


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--seed", type=int, default=3407)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("pip_chip2.jsonl"))
    args = ap.parse_args(argv)
    write_jsonl(make_rows(args.rows, args.seed), args.out)
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
