"""`python -m tools.pretrain_tiny_clip`: pretrain the demo world's tiny CLIP (tools/demo/pretrain.py)."""

import sys

from tools.demo.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
