"""``python -m pvae ...`` (and ``torchrun ... -m pvae train ...``): the ``pvae`` command."""

from pvae.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
