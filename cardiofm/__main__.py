"""``python -m cardiofm``: the same command line as the ``cardiofm`` console script."""

from cardiofm.cli.main import main

main()
