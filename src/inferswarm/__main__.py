from inferswarm.cli.main import main

main()
