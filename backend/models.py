"""Every table of the database, loaded in one import so that Base.metadata is whole: for the
migrations (backend/migrations/env.py) and whatever compares the schema with the models. Runs
refer to sweeps (runs.sweep_id) by table name only, so loading the runs' models alone does not
load the sweeps'."""

from __future__ import annotations

from . import browser_sessions  # noqa: F401
from .catalog import models as catalog  # noqa: F401
from .db import Base
from .jobs import models as jobs  # noqa: F401
from .runs import models as runs  # noqa: F401
from .runs import system as system_metrics  # noqa: F401
from .studies import models as studies  # noqa: F401
from .sweeps import models as sweeps  # noqa: F401
from .workers import models as workers  # noqa: F401

metadata = Base.metadata
