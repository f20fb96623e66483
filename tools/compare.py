#!/usr/bin/env python
"""Does ITNet match the specialist on a kind of data, at the same budget? Train ITNet (exact and low-rank
integrators, plus any ``--itnet NAME:key=value,…`` variants) and size-matched specialists on seeded diagnostics
and small real data sets, sweep the learning rate on validation, repeat over seeds, and write ``results.md``,
``results.json`` and ``results.png`` under ``--out`` (the ``comparison`` package next to this script).

Examples::

    python tools/compare.py --out runs/compare
    python tools/compare.py --quick --tasks parity digits --out runs/compare-quick
    python tools/compare.py --tasks locality --models itnet resnet --itnet wide:layer.kernel_width=32 --out runs/k32
"""

from __future__ import annotations

import sys

from comparison.cli import main

if __name__ == "__main__":
    sys.exit(main())
