"""Helpers for the notebooks, not submitted: ``data`` (which data a notebook runs on,
training in a notebook), ``analysis`` (data checks and error statistics),
``benchmarks`` (bench/results read and tabulated), ``plotting`` (figures),
``confidence_plots`` (confidence and cut faces, notebook 04), ``widgets`` (sliders),
``photos`` (faces in any photo and an upload button, notebook 05; needs the ``photos``
extra), ``figure_layout`` (figure sizes) and ``clean`` (notebooks saved without
outputs). They build on ``facepoints_lib.core`` and add matplotlib and ipywidgets."""
