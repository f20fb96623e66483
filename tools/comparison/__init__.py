"""ITNet against specialist models at one budget: tasks, models, the training protocol and the report behind
``tools/compare.py``.

- :mod:`.tasks`: the tasks (seeded diagnostics, each needing one inductive bias, and small real data sets);
- :mod:`.burgers`: the 1-D viscous Burgers solver behind the operator-learning task, and its Cole–Hopf check;
- :mod:`.readers`: readers of the real data sets' files (gzip idx, an R package's lazy-load data base);
- :mod:`.models`: ITNet wired to every task in one place, the specialists, and size matching;
- :mod:`.protocol`: training, the learning-rate sweep on validation and the seeds;
- :mod:`.report`: the Markdown table, the JSON and the plot.

**Import name.** Like the benchmark suites, this package is not part of the installed library: it is imported
as ``comparison`` from the ``tools`` folder (``python tools/compare.py`` puts that folder first on the import
path; the tests get it from pytest's ``pythonpath``). Imports inside it are relative.
"""
