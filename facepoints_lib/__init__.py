"""facepoints: 14 facial keypoints with a small CNN written from scratch in PyTorch.

The two functions the course grader calls::

    from facepoints_lib import train_detector, detect
    model = train_detector(train_gt, "train/images", fast_train=False)   # writes facepoints_model.pt
    points = detect("facepoints_model.pt", "test/images")               # {filename: 28 floats}

The package has three parts, one folder each:

* ``core/``: what is submitted. Every module in it is frozen into ``solution.py``
  (``core.FROZEN_MODULES``), and it imports only torch, numpy, Pillow and the standard library.
* ``notebook/``: what the notebooks use besides the core: data choice, statistics,
  figures and sliders (matplotlib, ipywidgets).
* ``tools/``: the ``facepoints`` command, benchmarks, the freezer that writes
  ``solution.py``, and synthetic faces for tests and a fresh clone.

``train_detector`` and ``detect`` are loaded on first use, so that importing one part
(for example ``facepoints_lib.core.detect``) does not import the others.
"""

__version__ = "0.1.0"
__all__ = ["detect", "train_detector", "__version__"]


def __getattr__(name: str):
    if name == "detect":
        from .core.detect import detect
        return detect
    if name == "train_detector":
        from .core.train import train_detector
        return train_detector
    raise AttributeError(f"module 'facepoints_lib' has no attribute {name!r}")
