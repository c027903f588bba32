"Train from a config: `python tools/train.py --config-file CFG [--options k=v ...]` (see `sonata_nb.recipes`)."
from sonata_nb.recipes import train_main

if __name__ == "__main__":
    train_main()
