import sys

from safegene.cli import main

sys.exit(main())
