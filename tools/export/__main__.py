from tools.export.write import main

if __name__ == "__main__":
    main()
