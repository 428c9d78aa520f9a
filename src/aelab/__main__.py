"""``python -m aelab``: the same as the ``aelab`` command."""

from .cli import main

raise SystemExit(main())
