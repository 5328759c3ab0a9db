"""Settings for running the notebooks with nbval directly::

    python -m pytest --nbval-lax --nbval-current-env notebooks/

The outputs stored in cells marked ``# NBVAL_CHECK_OUTPUT`` were recorded in CI mode on
synthetic faces (see README.md here), so the kernels get exactly those settings,
whatever the shell says. ``tests/test_notebooks.py`` runs each notebook this way.
"""

import os

os.environ["FACEPOINTS_DATA"] = "synthetic"      # not the course data, even when data/train exists
os.environ["FACEPOINTS_NB_FAST"] = "1"           # CI mode: small sizes, same code paths
os.environ.pop("FACEPOINTS_FIGURES", None)       # never rewrite docs/figures from a test run
os.environ.pop("MPLBACKEND", None)               # Agg here would hide the inline figures
