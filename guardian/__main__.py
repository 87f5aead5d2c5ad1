# `python -m guardian` is the same entry point as the `guardian` console script.
from guardian.cli import main

raise SystemExit(main())
