"""Helpers for the notebooks, not submitted: ``data`` (which data a notebook runs on,
training in a notebook), ``analysis`` (data checks and error statistics),
``benchmarks`` (bench/results read and tabulated), ``plotting`` (figures),
``confidence_plots`` (confidence and cut faces, notebook 04) and ``widgets`` (sliders). They build on ``facepoints_lib.core`` and add matplotlib and
ipywidgets."""
