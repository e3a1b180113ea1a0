"""``python -m batchsage``: the command line (what ``torchrun ... -m batchsage`` starts on each rank)."""

from batchsage.cli import main

if __name__ == "__main__":
    main()
