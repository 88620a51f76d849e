"""`torchrun --nproc_per_node N -m synseg.eval ...` runs `synseg eval ...` in each process, the images split over them."""
import sys

from synseg.cli import main

sys.exit(main(["eval", *sys.argv[1:]]))
