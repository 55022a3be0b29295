"""`torchrun --nproc-per-node N -m pipelines.train ...`: `m3w train` with the same errors and exit
codes on every rank."""

import sys

from pipelines.cli import main

raise SystemExit(main(["train", *sys.argv[1:]]))
