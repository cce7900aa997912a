from genrecli.cli import main

main()
