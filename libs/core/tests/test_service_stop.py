"""A role asked to stop by a signal exits within its drain time plus
STOP_GRACE_S, whatever holds it up: past that its watchdog writes every
thread's stack to stderr and ends the process (Postfix's daemons end
themselves likewise when their watchdog timer runs out)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap

import pytest

# A role whose drain hangs: awaiting something that never comes (first),
# or blocking its event loop outright (second) -- the watchdog is a thread,
# so it fires either way. Grace shortened so the test takes a second.
ROLE = textwrap.dedent("""
    import asyncio, sys, time
    from postfleet.core import service
    from postfleet.core.settings import CommonSettings

    service.STOP_GRACE_S = 0.5
    service.enable_stop_watchdog()  # as run_role does in a role's process

    async def main(how):
        async with service.Service("stuck", CommonSettings(), drain_timeout=0.5) as svc:
            svc.set_ready(True)
            print("ready", flush=True)
            await svc.stopping.wait()
            if how == "block":
                time.sleep(600)
            if how == "await":
                await asyncio.Event().wait()

    how = sys.argv[1]
    asyncio.run(main(how))
""")


@pytest.mark.slow
@pytest.mark.parametrize(("how", "stuck_line"), [("block", 15), ("await", 17)])
def test_a_role_stuck_after_sigterm_is_ended_by_its_watchdog_with_its_stacks(
        how: str, stuck_line: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", ROLE, how], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)  # TimeoutExpired: it never ended
    assert proc.returncode == 1
    assert "stuck did not stop within 1s of being asked to" in stderr
    # The dump names where it was stuck: the thread's stack when the loop
    # blocks, the tasks' stacks when a coroutine waits.
    # (ROLE's line numbers: time.sleep is line 15, the endless await 17.)
    assert re.search(rf"line {stuck_line},? in main", stderr), stderr


@pytest.mark.slow
def test_a_role_that_stops_in_time_exits_cleanly_before_its_watchdog() -> None:
    proc = subprocess.Popen([sys.executable, "-c", ROLE, "drained"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "did not stop" not in stderr


@pytest.mark.slow
def test_a_service_inside_another_program_has_no_watchdog() -> None:
    """Only run_role arms it: a role run inside a test process, signalled,
    must not end that process."""
    unarmed = ROLE.replace("service.enable_stop_watchdog()", "pass")
    assert unarmed != ROLE
    proc = subprocess.Popen([sys.executable, "-c", unarmed, "await"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(5)  # ten times the shortened deadline
    finally:
        proc.kill()
        proc.communicate()
