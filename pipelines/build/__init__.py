"""`m3w build` on Ray: the driver and its executors (job.py), the stages each task runs
(stages.py: plan, extract, decide, write, finalize), the job-wide decisions over partitioned tables
(decide.py, tables.py, archive_parts.py), the report's yield funnel (funnel.py), and the local Ray
session the driver starts and cleans up after (ray_local.py, ray_stale.py)."""
