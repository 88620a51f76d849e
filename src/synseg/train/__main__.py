"""`torchrun --nproc_per_node N -m synseg.train ...` runs `synseg train ...` in each process."""
import sys

from synseg.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
