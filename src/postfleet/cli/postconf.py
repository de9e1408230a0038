"""``postfleet postconf``: the effective parameters of the roles, as
postconf(1) prints main.cf's (``name = value``).

    postfleet postconf                  every parameter, effective value
    postfleet postconf -n               only those set (config file, env)
    postfleet postconf -d               the defaults
    postfleet postconf NAME...          those parameters; -h: values only
    postfleet postconf --role qmgr      one role's view (its config section
                                        applied, like master.cf -o)

Each role is asked by running it: ``python -m postfleet.<role> --postconf``
(core.postconf) reads the same environment and config file the role would
and prints its parameters without connecting to anything. The CLI never
imports a role, and no second list of parameters and defaults exists to
drift from the roles' settings classes. A parameter whose value differs
between roles (a role section overrides it) is printed once per role as
``role/name = value``.

Postfix parameters: all (this is postconf).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from postfleet.core.postconf import POSTCONF_FLAG
from postfleet.core.roles import ROLE_MODULES
from postfleet.core.settings import CONFIG_ENV


def ask_role(role: str, config: Path | None) -> dict[str, dict[str, Any]]:
    env = dict(os.environ)
    if config is not None:
        env[CONFIG_ENV] = str(config.resolve())
    done = subprocess.run([sys.executable, "-m", ROLE_MODULES[role], POSTCONF_FLAG],
                          capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"postfleet postconf: fatal: {role}: "
                         f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
    answer: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return answer


def postconf(roles: list[str], config: Path | None, names: list[str], *, only_set: bool,
             defaults: bool, values_only: bool) -> list[str]:
    with ThreadPoolExecutor(max_workers=len(roles)) as pool:
        answers = dict(zip(roles, pool.map(lambda r: ask_role(r, config), roles),
                           strict=True))
    known = sorted({name for params in answers.values() for name in params})
    for name in names:
        if name not in known:
            print(f"postfleet postconf: warning: {name}: unknown parameter", file=sys.stderr)
    lines = []
    key = "default" if defaults else "value"
    for name in names or known:
        by_role = {role: params[name] for role, params in answers.items() if name in params}
        if not by_role or (only_set and not any(p["set"] for p in by_role.values())):
            continue
        shown = {role: p[key] for role, p in by_role.items()}
        if len(set(shown.values())) == 1:
            value = next(iter(shown.values()))
            lines.append(value if values_only else f"{name} = {value}".rstrip())
            continue
        for role, value in shown.items():
            lines.append(value if values_only else f"{role}/{name} = {value}".rstrip())
    return lines
