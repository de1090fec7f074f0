"""``python -m nasforge ...``: the CLI (torchrun starts it so: ``torchrun ... -m nasforge``)."""

from nasforge.cli import main

if __name__ == "__main__":
    main()
