"""``python -m uabnn_convert``: the ``uabnn-convert`` command line (also under ``torchrun``)."""

from uabnn_convert.cli import main

if __name__ == "__main__":
    main()
