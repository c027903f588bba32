"""S3DIS 6-fold table: `python tools/test_s3dis_6fold.py --record_root exp/s3dis/<name>`.

Sums the per-area counts `Area_k.pth` found in RECORD_ROOT (or in RECORD_ROOT/*/result/, the fold experiments of
`python -m sonata_nb.tester s3dis-6fold`) and writes RECORD_ROOT/6-fold.log and 6-fold.json (see nbs/26_tester.ipynb).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`
from sonata_nb.tester import s3dis_6fold_table_main

if __name__ == "__main__":
    s3dis_6fold_table_main()
