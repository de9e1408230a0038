"""The ``postfleet`` command: run roles, load and query routes, manage the queue."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from postfleet.core.roles import ROLE_MODULES

DESCRIPTION = """\
postfleet: a mail transfer agent cut along Postfix's lines, for Kubernetes.

  postfleet run all --config FILE     everything on one machine (embedded NATS
                                      + SQLite under ./var), like `postfix start`
  postfleet run ROLE                  one role (cleanup, qmgr, delivery, filter,
                                      ingress-smtp, operator) against the NATS
                                      and database named by --nats-url and
                                      --database-url (or POSTFLEET_* env vars)
  postfleet routes load FILE          publish FILE's routing: block to NATS KV
  postfleet route ADDRESS...          where mail for ADDRESS goes (sendmail -bv)
  postfleet import-postfix DIR --out OUTDIR
                                      a Postfix main.cf + tables as postfleet
                                      config and MailDomain/Transport resources
  postfleet queue list|show|flush|hold|release|requeue|delete
                                      mailq / postqueue / postsuper
                                      (`postfleet queue --help`)
  postfleet postconf [-n|-d] [--role ROLE] [NAME...]
                                      the roles' effective parameters (postconf)
  postfleet user add|del|list [NAME] --file FILE
                                      the built-in SASL user table
                                      (smtpd_sasl_type = builtin)
  postfleet dkim keygen --domain D --selector S --out DIR [--type rsa|ed25519]
                                      a DKIM key for cleanup's dkim_key_directory
                                      and the TXT record to publish
  postfleet sendmail [-f sender] [-t] [-i] [--] [recipient ...]
                                      sendmail(1): submit standard input
                                      through cleanup (`postfleet sendmail
                                      --help`)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="postfleet", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run all roles (monolithic) or one role",
                         description="Run every role under one supervisor (`all`) or one role.")
    run.add_argument("role", choices=["all", *ROLE_MODULES], help="`all` or a role name")
    run.add_argument("--config", type=Path, help="postfleet YAML (Postfix parameters)")
    run.add_argument("--var-dir", type=Path, default=Path("var"),
                     help="state for `run all`: SQLite queue, NATS store (default ./var)")
    run.add_argument("--nats-url", help="use this NATS instead of the embedded one "
                     "(run all) / the NATS to join (one role)")
    run.add_argument("--database-url", help="queue store URL, e.g. "
                     "postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///path")

    routes = sub.add_parser("routes", help="manage the routing snapshot")
    rsub = routes.add_subparsers(dest="routes_command", required=True)
    load = rsub.add_parser("load", help="publish a config file's routing: block to NATS KV")
    load.add_argument("file", type=Path)
    load.add_argument("--nats-url", default=os.environ.get("POSTFLEET_NATS_URL"),
                      help="NATS server (default: POSTFLEET_NATS_URL, or var/run.json)")
    load.add_argument("--var-dir", type=Path, default=Path("var"))

    route = sub.add_parser(
        "route", help="show how addresses are routed (sendmail -bv)",
        description="Per address: its address class, the addresses it is finally "
        "rewritten to (canonical, virtual alias, aliases), the transport and next hop, "
        "whether an MX lookup happens, and the reply an outside client gets at RCPT time. "
        "ADDRESS - reads addresses from standard input, one per line.")
    route.add_argument("addresses", nargs="+", metavar="ADDRESS")
    route.add_argument("--config", type=Path, help="read routes from this file")
    route.add_argument("--json", action="store_true",
                       help="one JSON object per address, one per line: address, class, "
                       "rewritten, transport, nexthop, port, mx, reject")

    imp = sub.add_parser(
        "import-postfix", help="turn a Postfix configuration into postfleet's",
        description="Read DIR/main.cf and the tables it names (hash:, texthash:, ... "
        "files are read from DIR by their base name) and write OUTDIR/postfleet.yaml "
        "(usable as --config) and OUTDIR/resources.yaml (MailDomain and Transport "
        "resources). Parameters that are not imported are listed on standard error.")
    imp.add_argument("directory", type=Path, metavar="DIR")
    imp.add_argument("--out", type=Path, required=True, metavar="OUTDIR")

    queue = sub.add_parser(
        "queue", help="inspect and manage the queue (mailq, postqueue, postsuper)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
  list                  the queue as `postqueue -p` (mailq) prints it;
                        --json: as `postqueue -j` (one object per line)
  show ID               one message's envelope, client and headers
  flush [ID...]         deliver deferred mail now (postqueue -f / -i);
                        flush --site DOMAIN: the mail for one site (postqueue -s)
  hold ID...|ALL [QUEUE]       postsuper -h
  release ID...|ALL [QUEUE]    postsuper -H (held messages only)
  requeue ID...|ALL [QUEUE]    postsuper -r (routes are resolved again)
  delete ID...|ALL [QUEUE]     postsuper -d (postsuper -d ALL deferred)

QUEUE is incoming, active, deferred or hold. --sender and --recipient-domain
narrow any of these (and alone stand for ALL); --sender '<>' is the null
sender.""")
    queue.add_argument("action", choices=["list", "show", "flush", "hold", "release",
                                          "requeue", "delete"])
    queue.add_argument("operands", nargs="*", metavar="ID|ALL",
                       help="queue ids, or ALL and an optional queue name")
    queue.add_argument("--sender", help="only messages from this envelope sender")
    queue.add_argument("--recipient-domain", metavar="DOMAIN",
                       help="only messages with an undelivered recipient in DOMAIN")
    queue.add_argument("--state", choices=["incoming", "active", "deferred", "hold"],
                       help="list: only this queue")
    queue.add_argument("--site", metavar="DOMAIN",
                       help="flush: the deferred mail for DOMAIN (postqueue -s, ETRN)")
    queue.add_argument("--api", help="qmgr admin API URL (default: POSTFLEET_API or "
                       "var/run.json written by `run all`)")
    queue.add_argument("--var-dir", type=Path, default=Path("var"))
    queue.add_argument("--json", action="store_true",
                       help="list: postqueue -j's JSON lines; other actions: the API's answer")

    conf = sub.add_parser(
        "postconf", help="show the roles' parameters (postconf)",
        description="Print the effective parameters (name = value) as the roles take them "
        "from the environment (POSTFLEET_<NAME>), the config file (--config or "
        "POSTFLEET_CONFIG; a role's section overrides the top level) and their defaults. "
        "Each role is asked by running `python -m postfleet.<role> --postconf`; a value "
        "that differs between roles is printed as role/name = value.")
    conf.add_argument("names", nargs="*", metavar="NAME", help="only these parameters")
    conf.add_argument("-n", dest="only_set", action="store_true",
                      help="only parameters that are set (not left at their default)")
    conf.add_argument("-d", dest="defaults", action="store_true", help="the defaults")
    conf.add_argument("-H", dest="values_only", action="store_true",
                      help="values only, without `name = ` (postconf -h)")
    conf.add_argument("--role", action="append", choices=list(ROLE_MODULES),
                      help="ask only this role (repeatable; default: every role)")
    conf.add_argument("--config", type=Path, default=os.environ.get("POSTFLEET_CONFIG"),
                      help="postfleet YAML (default: POSTFLEET_CONFIG)")

    user = sub.add_parser(
        "user", help="manage the built-in SASL user table (smtpd_sasl_type = builtin)",
        description="Add (or change the password of), delete or list the users of the "
        "built-in SASL table: a Dovecot passwd-file with Argon2id hashes, which "
        "ingress-smtp reads as smtpd_sasl_path. add asks for the password twice on a "
        "terminal, or reads one line from standard input with --password-stdin.")
    user.add_argument("action", choices=["add", "del", "list"])
    user.add_argument("name", nargs="?", help="the login name (add, del)")
    user.add_argument("--file", type=Path, default=os.environ.get("POSTFLEET_SMTPD_SASL_PATH"),
                      help="the table (default: POSTFLEET_SMTPD_SASL_PATH)")
    user.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of standard input")

    dkim = sub.add_parser("dkim", help="DKIM keys for signing (cleanup's dkim_key_directory)")
    dsub = dkim.add_subparsers(dest="dkim_command", required=True)
    keygen = dsub.add_parser(
        "keygen", help="make a signing key and print its DNS record",
        description="Write a new private key to DIR/<selector>._domainkey.<domain> (mode "
        "0600; the file name is what dkim_key_directory expects) and the TXT record to "
        "publish to the same name plus .txt, and print the record. Point cleanup's "
        "dkim_key_directory at DIR; mail from authenticated or mynetworks clients "
        "whose From: is in DOMAIN (or a subdomain) is then signed.")
    keygen.add_argument("--domain", required=True, help="the signing domain (d=)")
    keygen.add_argument("--selector", required=True, help="the selector (s=)")
    keygen.add_argument("--out", type=Path, required=True, help="the key directory")
    keygen.add_argument("--type", choices=["rsa", "ed25519"], default="rsa",
                        help="rsa (rsa-sha256, the default) or ed25519 (ed25519-sha256)")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    return p


def _dkim(args: argparse.Namespace) -> int:
    from postfleet.core.mailauth import keys

    try:
        keys.check_selector(args.selector)
        path = args.out / keys.record_name(args.selector, args.domain)
        if path.exists() and not args.force:
            raise SystemExit(f"postfleet dkim: {path} exists (--force replaces it)")
        private = keys.generate(args.type, args.bits)
        keys.write_key(args.out, args.selector, args.domain, private)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"postfleet dkim: {exc}") from None
    print(f"# private key: {path}")
    print(keys.dns_record(args.selector, args.domain, private))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.role == "all":
        from postfleet.cli.launcher import run_all

        if args.database_url:
            os.environ["POSTFLEET_DATABASE_URL"] = args.database_url
        return run_all(args.config, args.var_dir, args.nats_url)
    if args.config:
        os.environ["POSTFLEET_CONFIG"] = str(args.config.resolve())
    if args.nats_url:
        os.environ["POSTFLEET_NATS_URL"] = args.nats_url
    if args.database_url:
        os.environ["POSTFLEET_DATABASE_URL"] = args.database_url
    module = ROLE_MODULES[args.role]
    os.execv(sys.executable, [sys.executable, "-m", module])
    return 0  # not reached


def _routes(args: argparse.Namespace) -> int:
    from postfleet.cli.routes import publish_config_routes
    from postfleet.core.settings import load_config_file

    nats_url = args.nats_url
    state = args.var_dir / "run.json"
    if not nats_url and state.exists():
        nats_url = json.loads(state.read_text())["nats_url"]
    if not nats_url:
        raise SystemExit("no NATS server: pass --nats-url or set POSTFLEET_NATS_URL")
    try:
        cfg = load_config_file(args.file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {args.file}: {exc}") from None
    version = asyncio.run(publish_config_routes(nats_url, cfg))
    print(f"routing snapshot version {version} published from {args.file}")
    return 0


def _route(args: argparse.Namespace) -> int:
    from postfleet.cli.routes import describe, format_route, route_context
    from postfleet.core.settings import load_config_file

    try:
        cfg = load_config_file(args.config) if args.config else {}
        ctx = route_context(cfg)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {args.config}: {exc}") from None
    addresses: list[str] = []
    for arg in args.addresses:
        if arg == "-":
            addresses.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            addresses.append(arg)
    for address in addresses:
        info = describe(ctx, address)
        print(format_route(info, args.json), flush=True)
        if args.json:
            for note in info.get("_notes", []):
                print(f"postfleet route: {address}: {note}", file=sys.stderr)
    return 0


def _import_postfix(args: argparse.Namespace) -> int:
    from postfleet.cli.postfix_import import import_postfix, write_outputs

    try:
        result = import_postfix(args.directory)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot import {args.directory}: {exc}") from None
    for warning in result.warnings:
        print(f"postfleet import-postfix: {warning}", file=sys.stderr)
    written = write_outputs(result, args.out)
    for path in written:
        print(f"wrote {path}")
    return 0


def _queue(args: argparse.Namespace) -> int:
    from postfleet.cli.queue import queue_command

    return queue_command(args)


def _postconf(args: argparse.Namespace) -> int:
    from postfleet.cli.postconf import postconf

    for line in postconf(args.role or list(ROLE_MODULES), args.config, args.names,
                         only_set=args.only_set, defaults=args.defaults,
                         values_only=args.values_only):
        print(line)
    return 0


def _user(args: argparse.Namespace) -> int:
    from postfleet.cli.users import manage_users

    if not args.file:
        raise SystemExit("which user table? pass --file or set POSTFLEET_SMTPD_SASL_PATH")
    return manage_users(args.action, args.name, Path(args.file), args.password_stdin)
def _sendmail(argv: list[str]) -> int:
    """sendmail's getopt-style options are not argparse's: parsed apart."""
    from postfleet.cli.sendmail import USAGE, sendmail
    from postfleet.core.settings import CONFIG_ENV, load_config_file

    if argv[:1] in (["--help"], ["-h"]):
        print(USAGE)
        print(sys.modules["postfleet.cli.sendmail"].__doc__)
        return 0
    try:
        config = load_config_file(os.environ.get(CONFIG_ENV))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"postfleet sendmail: fatal: {exc}") from None
    return sendmail(argv, sys.stdin.buffer, config, Path("var"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sendmail"]:
        return _sendmail(argv[1:])
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "routes": _routes, "route": _route, "queue": _queue,
                "import-postfix": _import_postfix, "user": _user, "dkim": _dkim,
                "postconf": _postconf}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
