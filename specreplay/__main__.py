import sys

from specreplay.cli import main

sys.exit(main())
