"""``python -m uabnn_convert``: the ``uabnn-convert`` command line."""

from uabnn_convert.cli import main

if __name__ == "__main__":
    main()
