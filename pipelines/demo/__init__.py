"""`m3w demo` and the data it makes: the generated website (sample_site.py) and its grounded
pictures (grounded.py), crawl archives written the way real crawlers write them (crawl_archive.py),
tiny models built from configs (tiny.py), and the end-to-end run (run.py)."""
