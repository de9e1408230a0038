"""`postfleet run all`'s preparation, run as its own short-lived process:
migrate the queue store (POSTFLEET_DATABASE_URL) and publish the routing
block of the config file (POSTFLEET_CONFIG) to NATS (POSTFLEET_NATS_URL).
Prints the snapshot version it published.

Postfix parameters: the config file's routing: block.
"""

from __future__ import annotations

import asyncio
import os

from postfleet.cli.routes import publish_config_routes
from postfleet.core.configfile import CONFIG_ENV, load_config_file
from postfleet.core.db.engine import create_engine
from postfleet.core.db.migrate import upgrade


async def prepare() -> int:
    engine = create_engine(os.environ["POSTFLEET_DATABASE_URL"])
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    cfg = load_config_file(os.environ.get(CONFIG_ENV))
    return await publish_config_routes(os.environ["POSTFLEET_NATS_URL"], cfg)


def main() -> None:
    version = asyncio.run(prepare())
    print(f"routing snapshot version {version} published", flush=True)


if __name__ == "__main__":
    main()
