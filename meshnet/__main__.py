import sys

from meshnet.cli import main

sys.exit(main())
