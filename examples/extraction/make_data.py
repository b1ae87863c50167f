"""A small synthetic extraction set for the fine-tuning demo: short notes about people, and the
fields to pull out of them (name, city, role).

Writes, into DIR: train.jsonl (chat records whose user turn is exactly the prompt `kit eval
generate --fields name,city,role` sends), prompts.jsonl (held-out notes) and gold.jsonl (their
fields). Deterministic: the same files every time.

    python examples/extraction/make_data.py DIR [--train N] [--test N]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

FIRST = ["Amara", "Bogdan", "Chen", "Dalia", "Emeka", "Freya", "Gustavo", "Hana", "Ilse", "Jamal", "Kaito", "Lucia",
         "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tamsin", "Umar", "Vera", "Wen", "Yusuf"]
LAST = ["Okafor", "Novak", "Li", "Haddad", "Eze", "Lindqvist", "Ramos", "Sato", "Berger", "Khan", "Mori", "Ferri",
        "Silva", "Petrova", "Holm", "Iyer", "Moreau", "Delgado", "Berg", "Reyes", "Aziz", "Kuznetsova", "Zhou", "Demir"]
CITIES = ["Chicago", "Evanston", "Lisbon", "Nairobi", "Osaka", "Toronto", "Lyon", "Krakow", "Austin", "Madison",
          "Seoul", "Porto", "Dublin", "Accra", "Denver", "Hamburg"]
ROLES = ["postdoc", "data engineer", "lab manager", "research scientist", "PhD student", "statistician",
         "software engineer", "professor", "nurse", "economist"]
PATTERNS = [
    "{name} moved to {city} last spring and now works as a {role}.",
    "Our new {role}, {name}, joins the team from {city}.",
    "Meeting notes: {name} ({role}, based in {city}) will present the results.",
    "{name} is a {role} who lives in {city}.",
    "From {city}, {name} wrote to ask about the {role} position they hold.",
    "Please welcome {name}, a {role} at our {city} office.",
]


def records(n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        fields = {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "city": rng.choice(CITIES), "role": rng.choice(ROLES)}
        out.append({"text": rng.choice(PATTERNS).format(**fields), "fields": fields})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--test", type=int, default=16)
    args = parser.parse_args()
    from kit.eval.prompts import load_template

    template = load_template(None)  # the prompt `kit eval generate --fields ...` sends
    names = ["name", "city", "role"]
    rng = random.Random(7)
    args.dir.mkdir(parents=True, exist_ok=True)
    with open(args.dir / "train.jsonl", "w") as f:
        for r in records(args.train, rng):
            prompt = template.render(text=r["text"], record=r, field_names=names)
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": json.dumps(r["fields"])}]}) + "\n")
    test = records(args.test, random.Random(11))
    with open(args.dir / "prompts.jsonl", "w") as p, open(args.dir / "gold.jsonl", "w") as g:
        for i, r in enumerate(test):
            p.write(json.dumps({"id": i, "text": r["text"]}) + "\n")
            g.write(json.dumps({"id": i, "fields": r["fields"]}) + "\n")
    print(f"wrote {args.train} training and {args.test} held-out records to {args.dir}")


if __name__ == "__main__":
    main()
