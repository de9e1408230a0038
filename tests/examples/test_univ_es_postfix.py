"""Drop-in, proven against Postfix itself: for each examples/univ.es variant,
a private Postfix (Debian's 3.7, a real peer) runs the variant's own
``postfix/`` files and postfleet runs the same host twice — on the
variant's ``postfleet.yaml`` (native) and on what ``postfleet
import-postfix`` makes of ``postfix/`` (imported). The same SMTP
conversations go to all three, from inside mynetworks (127.0.0.1) and from
outside (127.0.0.2): every address the variant's tables name, in every
domain it serves, plus unknown users, subdomains, quoted local parts and
``+ext`` forms. Every RCPT reply code and enhanced status code must agree.

The one deliberate difference (README, examples/univ.es/README.md):
postfleet's own default relay restrictions end in reject_unauth_destination,
so the native configuration answers a relay attempt ``554 5.7.1`` where
Postfix 3.7 at compatibility_level 3.6 answers ``454 4.7.1``
(defer_unauth_destination); the imported configuration keeps Postfix's 454.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.settings import load_config_file
from postfleet.core.testing.monolith import RunAll
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.postfix_variant import VariantPostfix

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "univ.es"
VARIANTS = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
POSTFLEET = str(Path(sys.executable).parent / "postfleet")
INSIDE, OUTSIDE = "127.0.0.1", "127.0.0.2"
SENDER = "probe@example.org"
BATCH = 8  # RCPTs per session: below smtpd_soft_error_limit even if all fail
# (Postfix's reply) -> postfleet's, for the native configuration only.
DELIBERATE_NATIVE = {("454", "4.7.1"): ("554", "5.7.1")}

Reply = tuple[str, str]  # code, enhanced status code


def _table_keys(path: Path, sep: str = " ") -> list[str]:
    if not path.exists():
        return []
    keys = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith(("#", " ", "\t")):
            keys.append(line.split(sep, 1)[0].split()[0].rstrip(":").lower())
    return keys


def probes(variant: str) -> list[str]:
    """Every address the variant's tables name, in every domain it serves,
    and the forms around them."""
    src = EXAMPLES / variant / "postfix"
    from postfleet.cli.postfix_import import import_postfix

    snap = RoutingSnapshot.from_config(import_postfix(src).config["routing"])
    local_domains = [d for d in snap.expand_list(snap.mydestination) if d]
    relay_domains = [d for d in snap.expand_list(snap.relay_domains or []) if d]
    alias_domains = [d for d in snap.expand_list(snap.virtual_alias_domains or []) if d]
    users = sorted({*_table_keys(src / "aliases", ":"), *_table_keys(src / "passwd", ":")})
    out: list[str] = ["postmaster", "abuse", "nobody", "jheras@pastorro.com",
                      "someone@depart3.univ.es", "x@[192.0.2.1]"]
    for domain in local_domains:
        out += [f"{u}@{domain}" for u in users]
        out += [f"nobody@{domain}", f"root+ext@{domain}", f'"root"@{domain}',
                f'"nobody"@{domain}', f"ROOT@{domain.upper()}", f"someone@sub.{domain}"]
    for key in [*_table_keys(src / "virtual"), *_table_keys(src / "relocated")]:
        local, _, domain = key.partition("@")
        out += [key, f'"{local}"@{domain}', f"{local}+ext@{domain}", f"nobody@{domain}"]
    for domain in [*relay_domains, *alias_domains]:
        out += [f"someone@{domain}", f"someone@lab.{domain}", f'"someone"@{domain}']
    for key in _table_keys(src / "transport"):
        if "@" in key:
            out.append(key)
        else:
            out += [f"someone@{key.lstrip('.')}", f"someone@lab.{key.lstrip('.')}"]
    return list(dict.fromkeys(out))


async def _session(port: int, source: str, rcpts: list[str]) -> list[Reply]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))

    async def reply(command: str | None) -> str:
        if command is not None:
            writer.write(command.encode() + b"\r\n")
            await writer.drain()
        while True:
            line = (await asyncio.wait_for(reader.readline(), 60)).decode().rstrip()
            if line[3:4] != "-":
                return line

    try:
        assert (await reply(None)).startswith("220")
        assert (await reply("EHLO client.example.org")).startswith("250")
        mail = await reply(f"MAIL FROM:<{SENDER}>")
        assert mail.startswith("250"), mail
        answers = []
        for rcpt in rcpts:
            line = await reply(f"RCPT TO:<{rcpt}>")
            parts = line.split()
            answers.append((parts[0], parts[1] if len(parts) > 1 and parts[1][:1].isdigit()
                            else ""))
        await reply("QUIT")
        return answers
    finally:
        writer.close()


async def conversations(port: int, addresses: list[str]) -> dict[tuple[str, str], Reply]:
    out: dict[tuple[str, str], Reply] = {}
    for source in (INSIDE, OUTSIDE):
        for i in range(0, len(addresses), BATCH):
            batch = addresses[i:i + BATCH]
            for address, answer in zip(batch, await _session(port, source, batch), strict=True):
                out[(source, address)] = answer
    return out


def _imported_config(variant: str, out: Path) -> dict[str, object]:
    subprocess.run([POSTFLEET, "import-postfix", str(EXAMPLES / variant / "postfix"),
                    "--out", str(out)], check=True, capture_output=True, timeout=60)
    return load_config_file(out / "postfleet.yaml")


async def _postfix_answers(variant: str, workdir: Path,
                           addresses: list[str]) -> dict[tuple[str, str], Reply]:
    def start() -> VariantPostfix:
        return VariantPostfix(workdir, EXAMPLES / variant / "postfix", free_port()).__enter__()

    postfix = await asyncio.to_thread(start)
    try:
        return await conversations(postfix.port, addresses)
    finally:
        await asyncio.to_thread(postfix.__exit__, None, None, None)


async def _postfleet_answers(workdir: Path, config: dict[str, object],
                             addresses: list[str]) -> dict[tuple[str, str], Reply]:
    async with RunAll(workdir, dict(config)) as mta:
        return await conversations(mta.port, addresses)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_postfleet_answers_every_rcpt_as_postfix_does(variant: str, tmp_path: Path) -> None:
    addresses = probes(variant)
    assert len(addresses) > 30
    configs = {"native": load_config_file(EXAMPLES / variant / "postfleet.yaml"),
               "imported": await asyncio.to_thread(_imported_config, variant,
                                                   tmp_path / "imported-config")}
    for kind in configs:
        (tmp_path / kind).mkdir()
    # The three MTAs are independent (own ports, queues, NATS): run at once.
    reference, *ours = await asyncio.gather(
        _postfix_answers(variant, tmp_path / "postfix", addresses),
        *(_postfleet_answers(tmp_path / kind, config, addresses)
          for kind, config in configs.items()))
    # Postfix took these as its tables say (a sanity check of the harness).
    assert reference[(OUTSIDE, "root@" + variant_host(variant))] == ("250", "2.1.5")
    assert reference[(OUTSIDE, "jheras@pastorro.com")] == ("454", "4.7.1")

    for kind, answers in zip(configs, ours, strict=True):
        allowed = DELIBERATE_NATIVE if kind == "native" else {}
        differences = [
            f"{kind} {'inside' if source == INSIDE else 'outside'} <{address}>: "
            f"Postfix {' '.join(expected)}, postfleet {' '.join(answers[(source, address)])}"
            for (source, address), expected in reference.items()
            if answers[(source, address)] != allowed.get(expected, expected)]
        assert differences == [], "\n".join(differences)


def variant_host(variant: str) -> str:
    return "relay.univ.es" if variant.startswith("relay") else "smtp.univ.es"
