"""Serving processes: one worker (server/serving/worker.py), or a router in front of one
worker per core (server/serving/router.py)."""
