"""`build-sd bench`: run a plan's configurations for real; predicted vs measured (a driver: it
builds, profiles, plans and runs). run.py holds the steps; predict.py the cost model's side,
measure.py the timed rounds, report.py the table and chart, options.py the flags."""
