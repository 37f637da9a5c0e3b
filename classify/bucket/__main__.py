import sys

from classify.bucket.cli import main

sys.exit(main())
