"""``python -m bitro``: the command line, as the ``bitro`` script."""

from bitro.cli import main

if __name__ == "__main__":
    main()
