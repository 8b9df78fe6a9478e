"""`python -m tools.plots`: the figures of an output tree (tools/results/plots.py)."""

from tools.results.plots import main

if __name__ == "__main__":
    main()
