"""Run folders: header, append-only samples, cache, metrics, report; resumable after a kill."""

from poise.runs.run import Run, find_run, list_runs, record_key

__all__ = ["Run", "find_run", "list_runs", "record_key"]
