from fg_edge.cli import main

main()
