"""`m3w inspect`: the shard reader every command shares (read.py), statistics (stats.py), one
document as text (show.py), the contract check (verify.py), the browsable HTML report (html.py), and
the subcommands that put them on the command line (command.py)."""
