"""``python -m aperture_zoo.train NAME ...`` / ``torchrun --nproc_per_node=N -m aperture_zoo.train NAME ...``.

The same options as ``aperture train``; under torchrun every rank runs this and rank 0 reports.
"""

import sys

from aperture_zoo.cli import app


def main() -> None:
    app(args=["train", *sys.argv[1:]], prog_name="python -m aperture_zoo.train")


if __name__ == "__main__":
    main()
