from effconv.cli import main

main()
