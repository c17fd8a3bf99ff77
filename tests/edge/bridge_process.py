"""Run the bridge as its command does, with the config's sources plus test counters.

    python tests/edge/bridge_process.py --config edge.yaml \
        --counter STATION:BASE_TS_MS:START:COUNT:PER_SECOND [--counter …]

For the tests that kill the bridge (-9) and start it again: the production command takes only
a config file, and test sources have no place in it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "aegis.settings.edge"


def main() -> None:
    import django

    django.setup()
    from edge.bridge import Bridge
    from edge.config import build_sources, load
    from tests.edge.counter import Counter

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--counter", action="append", default=[])
    arguments = parser.parse_args()
    config = load(arguments.config)
    sources = build_sources(config)
    for spec in arguments.counter:
        station, base, start, count, rate = spec.split(":")
        sources.append(
            Counter(
                station=station,
                base_ts_ms=int(base),
                start=int(start),
                count=int(count),
                per_second=float(rate),
            )
        )
    asyncio.run(Bridge(config, sources).serve())


if __name__ == "__main__":
    main()
