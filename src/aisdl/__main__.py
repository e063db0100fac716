from aisdl.cli.main import main

main()
