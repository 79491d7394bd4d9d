"""``accelerate launch -m cpn_dist.pipeline --config ...`` runs ``cpn pipeline``."""

import sys

from cpn_dist.cli import main

sys.exit(main(["pipeline", *sys.argv[1:]]))
