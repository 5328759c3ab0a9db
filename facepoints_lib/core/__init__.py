"""The submitted core: everything ``solution.py`` holds, and nothing else.

Each module is frozen into ``solution.py`` (``python -m facepoints_lib freeze``), in the
order below, and imports only torch, numpy, Pillow and the standard library:

* data: ``schema`` (the 14 points), ``files`` (outputs written whole or not at all),
  ``images`` and ``gt_csv`` (reading pictures and tables), ``dataset`` (faces decoded
  once, held in memory; the train/validation split);
* the network and its inputs: ``augment`` (batch augmentation), ``align`` (the face
  turned upright for the second look), ``model``;
* training: ``losses``, ``config`` (the recipe and the run as plain data), ``fit`` (the
  loop), ``cascade`` (the second stage, trained on faces aligned by their points),
  ``train`` (choosing the faces and running both stages, ``train_detector``);
* prediction: ``inference`` (``predict``, device and precision, used by training and
  detection), ``confidence`` (the expected err of an answer, calibrated on unseen faces),
  ``checkpoint`` (model files), ``detect``;
* scoring: ``metrics``, ``progress`` (the text progress bar), ``grader`` (the course's
  run.py, locally: ``python solution.py DATA``).

Detection imports no training module.
"""

# Modules frozen into solution.py, in dependency order (read by tools/freeze.py with ast;
# the folder must hold exactly these).
FROZEN_MODULES = (
    "schema", "files", "images", "gt_csv", "dataset", "augment", "align", "model", "losses",
    "inference", "progress", "metrics", "confidence", "checkpoint", "config", "fit", "cascade", "train", "detect", "grader",
)
FROZEN_ENTRY_POINT = 'if __name__ == "__main__":\n    raise SystemExit(grader_main())\n'
# The functions solution.py is for, listed in its header (read by tools/freeze.py with ast).
FROZEN_ENTRY_POINTS = (
    ("train_detector", "the course's training call: fast_train=True is the grader's short check"),
    ("detect", "the course's detection call: {file name: 28 coordinates in the picture's pixels}"),
    ("detect_details", "detect, with each face's and each point's expected err and confidence"),
    ("grader_main", "python solution.py DATA: the local grader (err and mark, as the course's run.py)"),
)
