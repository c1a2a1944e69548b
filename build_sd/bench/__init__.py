"""`build-sd bench`: run a plan's configurations for real; predicted vs measured (a driver: it
builds, profiles, plans and runs). run.py holds the steps, report.py prints and draws."""
