from dedupd.cli import run

run()
