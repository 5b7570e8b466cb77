"""Errors that pass by themselves (a database restart, a dropped connection, a broker blip): the task is retried
with backoff and keeps its claim. A full disk too: an outage of the machine, not the media's fault.

Light on purpose: the worker's main process, which must not load NumPy or an ML runtime, imports it."""

from __future__ import annotations

import redis.exceptions
import sqlalchemy.exc
from kombu.exceptions import OperationalError as BrokerError

from fervid.errors import DiskFull

TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, redis.exceptions.ConnectionError,
             redis.exceptions.TimeoutError, BrokerError, ConnectionError, DiskFull)
