"""``python -m facepoints_lib``: the ``facepoints`` command line."""

from .tools.cli import main

raise SystemExit(main())
