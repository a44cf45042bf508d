"""`python -m alkn_cli ...` is `alkn ...`."""

from .main import main

raise SystemExit(main())
