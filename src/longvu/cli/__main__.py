"""``python -m longvu.cli``: the ``longvu`` command."""

from .main import main

if __name__ == "__main__":
    raise SystemExit(main())
