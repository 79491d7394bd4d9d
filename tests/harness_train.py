"""Runs several short trainings in ONE process (or one `accelerate launch`), for the split-invariance
tests: each variant is a list of dotted overrides; its run goes to OUT/<name>/.

    python tests/harness_train.py CONFIG OUT name1:key=v,key=v name2:...
"""

import logging
import sys

from cpn_dist.config import load_config
from cpn_dist.train import train
from cpn_dist.training.launch import quiet_libraries


def main(argv: list[str]) -> None:
    config, out, *variants = argv
    logging.basicConfig(level=logging.WARNING)
    quiet_libraries()
    for variant in variants:
        name, _, overrides = variant.partition(":")
        items = [o for o in overrides.split(",") if o]
        train(load_config(config, [*items, f"output.dir={out}/{name}"]))


if __name__ == "__main__":
    main(sys.argv[1:])
