"""Test a trained segmentor: `python tools/test.py --config-file CONFIG --options weight=.../model_best.pth [save_path=DIR]`.

Same as the `sonata-test` console script (see nbs/27_recipes.ipynb and nbs/26_tester.ipynb). Under torchrun every process tests a share of the scenes.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`
from sonata_nb.recipes import test_main

if __name__ == "__main__":
    test_main()
