"""`python -m conta` is the same as the `conta` console script (and what torchrun launches)."""

from conta.cli import main

raise SystemExit(main())
