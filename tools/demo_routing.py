"""`python -m tools.demo_routing`: per-style routing of a trained MoCoOp run on the demo world
(tools/demo/routing.py)."""

from tools.demo.routing import main

if __name__ == "__main__":
    main()
