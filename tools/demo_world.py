"""`python -m tools.demo_world`: generate the demo world's dataset (tools/demo/dataset.py)."""

import sys

from tools.demo.dataset import main

if __name__ == "__main__":
    sys.exit(main())
