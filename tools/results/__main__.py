from tools.results.report import main

main()
