from pyramid.cli import main

main()
