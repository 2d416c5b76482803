"""One life cycle for everything a worker executes: runs and dataset jobs.

    queued ──claim──▶ running ──finish──▶ succeeded | cancelled
      ▲                 │  └──fail──────▶ failed
      └──release / reconcile (holder dead) ┘   (failed after too many dead holders)

The database is the source of truth. A worker holds a row like a lease: its claim, heartbeats
and writes are all conditional on still being the row's holder, so a worker taken for dead can
write nothing more. The functions are plain functions over a session, parameterised by the ORM
model (any subclass of `models.Leased`), split by caller:

- api.py: what the API calls (send committed ids to the broker, cancel);
- lease.py: what a worker holding a lease calls (claim, heartbeat, progress, finish, fail, release);
- reconcile.py: what the reconcile step calls (recover rows whose worker died, resend ids).
"""
