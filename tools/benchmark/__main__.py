from tools.benchmark.cli import main

main()
