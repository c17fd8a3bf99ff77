"""`python -m aegis.embedded status|start|stop`: manage the embedded servers of a data directory.

Not a Django command on purpose: loading the development settings would lease (and so start)
the very servers this inspects.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import psutil

from aegis.embedded.runtime import (
    SERVICE_ORDER,
    EmbeddedServices,
    default_data_dir,
    product_processes,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aegis.embedded",
        description=(
            "status: the embedded servers of the data directory with pids, ports and holders. "
            "start: start them and keep them until Ctrl-C/SIGTERM (for running the product's "
            "processes by hand). stop: stop them even if a process still holds them, e.g. after "
            "a launcher was killed with SIGKILL."
        ),
    )
    parser.add_argument("action", choices=["status", "start", "stop"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: AEGIS_DATA_DIR or ./var)",
    )
    arguments = parser.parse_args(argv)
    services = EmbeddedServices(
        arguments.data_dir or default_data_dir(),
        nats_sync_interval=os.environ.get("AEGIS_NATS_SYNC_INTERVAL") or "always",
    )
    if arguments.action == "status":
        print(json.dumps(services.status(), indent=2))
    elif arguments.action == "stop":
        leftovers = product_processes(services.data_dir)
        for process in leftovers:
            process.terminate()
        psutil.wait_procs(leftovers, timeout=15)
        if leftovers:
            print(f"stopped {len(leftovers)} Aegis processes left by a killed launcher")
        stopped = services.stop_all()
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        urls = services.acquire(SERVICE_ORDER)
        for name, url in urls.items():
            print(f"{name}: {url}", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
        print(f"stopped: {', '.join(services.release())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
