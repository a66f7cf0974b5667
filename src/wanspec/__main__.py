from wanspec.cli.app import main

main()
