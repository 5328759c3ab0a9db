"""``python -m facepoints_lib``: the ``facepoints`` command line."""

from .cli import main

raise SystemExit(main())
