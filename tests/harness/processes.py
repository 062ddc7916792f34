"""Stopping the processes the harness started: by their PID, never by name."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["stop_process"]


def stop_process(proc: subprocess.Popen | None, timeout: float = 10, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to our own child `proc` and wait; SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
