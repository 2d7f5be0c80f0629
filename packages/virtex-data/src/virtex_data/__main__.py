"""``python -m virtex_data`` runs the ``virtex-data`` command line."""

from virtex_data.cli import main

if __name__ == "__main__":
    main()
