import sys

from safegene.cli import main

if __name__ == "__main__":  # not when a spawned job process imports it (zoo build --jobs)
    sys.exit(main())
