import sys

from engine.cli import main

if __name__ == "__main__":  # not again in a child that multiprocessing's spawn starts from this module
    sys.exit(main())
