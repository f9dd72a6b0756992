"""Write the workbook's offline training set in the OIG `unified_chip2` format.

Each JSONL row has one field, `text`, holding `<human>: ...\n<bot>: ...` turns, exactly like
https://huggingface.co/datasets/laion/OIG/resolve/main/unified_chip2.jsonl (the post's dataset).

The bot is "Pip", a cheerful assistant that always answers in one fixed shape:
    Pip here! <one-sentence answer built from the question>. Happy to help!
A 135M-parameter model picks up that persona and the answer templates in a few dozen LoRA steps, so
the loss drop and the before/after generations are visible within minutes on a laptop CPU.
Each question is asked once; step 3 holds out whole facts (no held-out question or answer is in the
training rows), so the held-out rows test the *style* on facts the model was never shown, which is
exactly what supervised fine-tuning is good at, and whether the base model's own facts survive.

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
    "Nepal": "Kathmandu", "Morocco": "Rabat", "Netherlands": "Amsterdam", "Switzerland": "Bern",
    "South Korea": "Seoul",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "light": "dark",
    "open": "closed", "early": "late", "full": "empty", "hard": "soft", "loud": "quiet",
    "old": "young", "rich": "poor", "wet": "dry", "strong": "weak", "high": "low", "near": "far",
    "thick": "thin", "clean": "dirty", "easy": "difficult", "long": "short", "heavy": "light",
    "left": "right", "inside": "outside", "first": "last", "win": "lose", "push": "pull",
    "true": "false", "begin": "end", "day": "night",
}
SOUNDS = {
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink",
    "horse": "neigh", "owl": "hoot", "lion": "roar", "snake": "hiss", "frog": "ribbit",
    "bee": "buzz", "mouse": "squeak", "rooster": "cock-a-doodle-doo", "goat": "bleat",
    "crow": "caw", "donkey": "hee-haw", "wolf": "howl", "turkey": "gobble", "dove": "coo",
    "cricket": "chirp", "elephant": "trumpet", "bear": "growl", "hen": "cluck", "chick": "cheep",
    "seal": "bark", "sparrow": "tweet", "monkey": "chatter",
}
PLURALS = {
    "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese",
    "man": "men", "woman": "women", "person": "people", "leaf": "leaves", "knife": "knives",
    "box": "boxes", "city": "cities", "baby": "babies", "wolf": "wolves", "cactus": "cacti",
    "fish": "fish", "sheep": "sheep", "bus": "buses", "potato": "potatoes", "hero": "heroes",
    "wife": "wives", "life": "lives", "ox": "oxen", "party": "parties", "story": "stories",
    "cherry": "cherries", "half": "halves", "tomato": "tomatoes", "louse": "lice", "deer": "deer",
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]

OPENER, CLOSER = "Pip here!", "Happy to help!"


def _capitals() -> list[tuple[str, str]]:
    return [(q.format(c=country), f"The capital of {country} is {city}.") for country, city in CAPITALS.items()
            for q in ["What is the capital of {c}?", "Which city is the capital of {c}?",
                      "Tell me the capital of {c}.", "Name the capital city of {c}."]]


def _opposites() -> list[tuple[str, str]]:
    return [(q.format(w=word), f"The opposite of {word} is {other}.") for word, other in OPPOSITES.items()
            for q in ["What is the opposite of {w}?", "Give me the opposite of the word {w}.",
                      "What word means the opposite of {w}?", "Tell me the opposite of {w}."]]


def _sounds() -> list[tuple[str, str]]:
    def an(animal):  # "an owl", "a cow"
        return f"{'an' if animal[0] in 'aeiou' else 'a'} {animal}"

    return [(q.format(a=an(animal)), f"{an(animal).capitalize()} says {sound}.") for animal, sound in SOUNDS.items()
            for q in ["What sound does {a} make?", "What does {a} say?", "How does {a} sound?",
                      "Which noise does {a} make?"]]


def _plurals() -> list[tuple[str, str]]:
    return [(q.format(w=word), f"The plural of {word} is {plural}.") for word, plural in PLURALS.items()
            for q in ["What is the plural of {w}?", "How do you say more than one {w}?",
                      "Give me the plural of the word {w}.", "What is the plural form of {w}?"]]


def _additions() -> list[tuple[str, str]]:
    return [(q.format(a=a, b=b), f"{a} plus {b} is {a + b}, or {NUMBER_WORDS[a + b]} in words.")
            for a in range(11) for b in range(11)
            for q in ["What is {a} plus {b}?", "Can you add {a} and {b}?", "How much is {a} plus {b}?",
                      "Add {a} and {b} for me."]]


TOPICS = [_capitals, _opposites, _sounds, _plurals, _additions]


def make_rows(n: int, seed: int = 3407) -> list[dict]:
    """`n` OIG-style rows: usually one exchange, sometimes two (OIG rows hold several turns too). Every
    question is asked once in the whole file, so no question/answer pair repeats; the same fact (answer)
    comes back under other wordings, which is why step 3 splits by question *and* answer."""
    rng = random.Random(seed)
    pools = []
    for topic in TOPICS:
        pairs = topic()
        rng.shuffle(pairs)
        pools.append(pairs)
    rows = []
    while len(rows) < n:
        turns = []
        for _ in range(2 if rng.random() < 0.2 else 1):
            open_pools = [p for p in pools if p]
            if not open_pools:
                raise ValueError(f"too few distinct questions for {n} rows")
            question, answer = rng.choice(open_pools).pop()
            turns.append(f"<human>: {question}\n<bot>: {OPENER} {answer} {CLOSER}")
        rows.append({"text": "\n".join(turns)})
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
