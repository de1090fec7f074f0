"""``python -m nasforge ...``: the CLI (also how torchrun starts it: ``torchrun ... -m nasforge``)."""

from nasforge.cli import main

if __name__ == "__main__":
    main()
