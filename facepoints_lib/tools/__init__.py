"""Tools around the core, not submitted: ``cli`` (the ``facepoints`` command), ``bench``
and ``rotation_bench`` (benchmarks that write bench/results), ``freeze`` (writes
``solution.py`` from ``facepoints_lib.core``) and ``synth`` (synthetic faces with exact
points, for tests and a fresh clone)."""
