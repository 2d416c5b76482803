"""The folder broker of the embedded default (no Redis): kombu's filesystem transport, made safe
for a reader polling while writers publish.

kombu's `_put` creates `<time>_<uuid>.<queue>.msg` and then writes into it; its lock is not
honoured by `_get`, which takes any `.msg` it lists and reads it. Under load a worker read an empty
or half-written file, died on the JSONDecodeError and left the runs it had taken "queued" forever.
Here a message is written under a name `_get` never lists and renamed into place whole, and a file
that still cannot be decoded (one left by a crash, or an older writer) is moved to `rejected/`
with a warning instead of ending the worker.

backend/queue.py selects this transport with Celery's `broker_transport` (TRANSPORT below), which
holds whatever URL the command line or BROKER_URL gives.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

TRANSPORT = "backend.filesystem_broker:Transport"

# kombu's `_get`, `_size` and `_purge` take a file when the text after its first dot is
# `<queue>.msg`: this suffix keeps a message being written out of all three.
WRITING_SUFFIX = ".writing"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put `payload` onto `queue`: written whole under a private name, then renamed into place."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, name)
        writing = path + WRITING_SUFFIX
        try:
            with open(writing, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            # Atomic on one filesystem: a reader lists either no file or the whole message.
            os.replace(writing, path)
        except OSError as exc:
            try:
                os.unlink(writing)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc

    def _get(self, queue):
        """The next message of `queue`; a file that is not a message goes to `rejected/`."""
        queue_find = f"{queue}.msg"
        # Taken by a rename into a folder beside the queue (ours: broker/processed, same filesystem).
        taken_folder = self.processed_folder
        os.makedirs(taken_folder, exist_ok=True)
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != queue_find:
                continue
            taken = os.path.join(taken_folder, filename)
            try:
                # One rename: of several readers, exactly one takes the file.
                os.replace(os.path.join(self.data_folder_in, filename), taken)
            except OSError:
                continue  # another reader took it meanwhile
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            try:
                message = loads(bytes_to_str(payload))
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                self._reject(taken, exc)
                continue
            if not self.store_processed:
                os.remove(taken)
            return message
        raise Empty()

    def _reject(self, path: str, error: Exception) -> None:
        rejected = Path(self.rejected_folder)
        rejected.mkdir(parents=True, exist_ok=True)
        target = rejected / Path(path).name
        os.replace(path, target)
        logger.warning("Broker message file %s is not a message (%s): moved to %s", Path(path).name, error, target)

    @property
    def rejected_folder(self) -> str:
        return self.transport_options.get(
            "rejected_folder", os.path.join(os.path.dirname(os.path.abspath(self.data_folder_in)), "rejected"))


class Transport(filesystem.Transport):
    Channel = Channel
