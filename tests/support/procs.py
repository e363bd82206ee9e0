"""Re-export of the process helpers the benchmarks share (``sidecar.testing``)."""

from sidecar.testing import CHILD_ENV, CREDS, MotoServer, Sidecar, client, free_port, wait_port  # noqa: F401
