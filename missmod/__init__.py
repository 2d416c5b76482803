"""missmod's Python client and command line, for scripts and notebooks: `from missmod.client
import Client`, or the `missmod` command. Imports neither torch nor the server's code."""

from .client import ApiError, Client, InvalidInput, MissmodError, NotFound, Unauthorized, WaitTimeout
from .models import Run, Sweep

__all__ = ["ApiError", "Client", "InvalidInput", "MissmodError", "NotFound", "Run", "Sweep", "Unauthorized",
           "WaitTimeout"]
