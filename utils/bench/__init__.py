"""Benchmarks of every stage of the pipeline (``python -m utils.bench --help``): ``flow``, ``tvl1``,
``extract`` and ``streams`` measure the stages, ``rows`` is the table they append to, ``machine``
what it is measured on, ``context`` the run they share, ``report`` the markdown, ``cli`` the
command line and the device check's smoke test."""
from utils.bench.cli import STAGES, main, resolve_stages, run_stages
from utils.bench.context import Bench, Settings
from utils.bench.flow import REFERENCE, recommend
from utils.bench.machine import time_until
from utils.bench.report import Report
from utils.bench.rows import CSV_COLUMNS, MEASURED, NOT_MEASURED, SKIPPED, Row, combine, read_csv, write_csv

__all__ = ["Bench", "CSV_COLUMNS", "MEASURED", "NOT_MEASURED", "REFERENCE", "Report", "Row", "SKIPPED", "STAGES",
           "Settings", "combine", "main", "read_csv", "recommend", "resolve_stages", "run_stages", "time_until",
           "write_csv"]
