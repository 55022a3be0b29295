"""`m3w train` and `m3w eval`: the typed config (config.py), the streaming loader from shards to
batches (data.py), the loop (loop.py), checkpoints (checkpoint.py), the checks before a run starts
(checks.py), the run summary (report.py), and the image-ablation and few-shot evaluation (eval.py).

`torchrun -m pipelines.train ...` runs `m3w train` on every rank (__main__.py)."""
