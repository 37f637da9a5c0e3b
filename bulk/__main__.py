import sys

from bulk.cli import main

sys.exit(main())
