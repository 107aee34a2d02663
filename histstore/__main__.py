from histstore.cli.main import main

main(prog_name="histstore")
