"""``python -m medseg.cli``: the ``medseg`` command."""

from medseg.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
