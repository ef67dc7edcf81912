"""`python -m ingress` is the `switchboard` command (how `--processes` starts its children)."""

from ingress.cli import main

raise SystemExit(main())
