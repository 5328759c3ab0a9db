"""Helpers for the notebooks, not submitted: ``data`` (which data a notebook runs on,
training in a notebook), ``analysis`` (data checks and error statistics),
``benchmarks`` (bench/results read and tabulated), ``plotting`` (figures) and
``widgets`` (sliders). They build on ``facepoints_lib.core`` and add matplotlib and
ipywidgets."""
