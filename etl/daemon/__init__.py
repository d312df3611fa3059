"""The daemon's parts, each with one job; `etl.scheduler.Daemon` puts them together.

- `supervisor`: starts every background task; a crash is logged with its traceback,
  counted (`etl_task_restarts_total{task}`) and the task restarted with backoff.
- `health`: whether PostgreSQL answers, the one way to call it, and the reconnects.
- `claims`: (source, slot) claims in `ingestion_runs`, in chunks paced by what is in flight.
- `ledger`: run rows the daemon owes (missed slots, errors it could not write yet), kept
  in memory until the database or the spool takes them.
- `drain`: the spool: durable writes, and loading it back oldest first, bounded per tick.
- `runner`: one slot of one source: claim, poll, load (or spool), outcome.

Every failure is classified once with `etl.faults.classify`; the fault decides what
happens (spool and retry, record as the source's error) and labels `etl_errors_total`.
"""
