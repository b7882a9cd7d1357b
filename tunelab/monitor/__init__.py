"""Monitoring in production: the model's reference profile (profile.py), the prediction log and its
database (store.py), drift statistics (drift.py), alert rules and webhook (alerts.py), the server's live
monitor (live.py), the dashboard page (dashboard.py) and the offline report (report.py)."""
