"""Regenerate the bundled world (data/world/): corpus, question splits and the knowledge base.

    python scripts/build_world.py                 # the shipped world (seed 0)
    python scripts/build_world.py --seed 3 --out /tmp/world3

The output is a pure function of the arguments: rerunning it rewrites the same bytes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from a2tgpo_lab.envs.world import generate_world, write_world

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "world")
    parser.add_argument("--n_companies", type=int, default=1000)
    parser.add_argument("--n_people", type=int, default=1000)
    parser.add_argument("--n_cities", type=int, default=60)
    parser.add_argument("--n_countries", type=int, default=12)
    args = parser.parse_args(argv)
    world = generate_world(args.seed, n_companies=args.n_companies, n_people=args.n_people,
                           n_cities=args.n_cities, n_countries=args.n_countries)
    for path in write_world(world, args.out):
        print(f"{path}  ({path.stat().st_size / 1024:.0f} KiB)")
    print("questions:", {split: len(questions) for split, questions in world.questions.items()},
          "documents:", len(world.documents))


if __name__ == "__main__":
    main()
