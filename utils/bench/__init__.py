"""Benchmarks of every stage of the pipeline, one module per stage measured.

videos -> ``flow`` (speed, quality, storage of each flow method) and ``tvl1`` (TV-L1 in Keras ops)
-> ``extract`` (frames + flow end to end) -> ``generators`` (input pipelines) -> ``models``
(training / inference samples/s) -> ``evaluation`` (whole-video scoring) ; ``demo`` times the
demo data set. ``rows`` is the table every stage appends to, ``machine`` what it is measured
on, ``context`` the run they share, ``report`` the markdown, ``cli`` the command line
(``python -m utils.bench --help``).
"""
from utils.bench.cli import STAGES, main, resolve_stages, run_stages
from utils.bench.context import Bench, Settings
from utils.bench.flow import REFERENCE, recommend
from utils.bench.machine import time_until
from utils.bench.report import Report
from utils.bench.rows import (CSV_COLUMNS, DERIVED, MEASURED, NOT_MEASURED, REFERENCE_STATUS, Row, combine,
                              read_csv, write_csv)

__all__ = ["Bench", "CSV_COLUMNS", "DERIVED", "MEASURED", "NOT_MEASURED", "REFERENCE", "REFERENCE_STATUS",
           "Report", "Row", "STAGES", "Settings", "combine", "main", "read_csv", "recommend", "resolve_stages",
           "run_stages", "time_until", "write_csv"]
