"""The e-stop's fast path on one host: a datagram on a Unix socket the executor listens to.

`cosmos-aloha estop` is a fresh process each time: creating a ROS participant and being matched by the
executor takes 0.5-3 s. So the executor also listens on an abstract Unix datagram socket named after its
namespace (Linux: no file to clean up, one per network namespace), and the command sends its request there
as soon as its arguments are parsed, before any ROS start-up. The ROS request follows, and its confirmation
is what the command reports. Another host, or a second executor in the same namespace on one host, uses the
ROS request alone. The socket only engages: clearing is not urgent and goes through ROS.
"""
from __future__ import annotations

import socket
import threading
from typing import Callable

ENGAGE = b"engage"


def address(namespace: str) -> str:
    """The socket's abstract name for a graph namespace ("", "/", "left_cell" and "/left_cell/" as ROS reads them)."""
    return "\0cosmos_aloha/estop/" + namespace.strip("/")


def engage(namespace: str = "") -> bool:
    """Ask an executor on this host to engage its e-stop; False when none listens for this namespace."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(ENGAGE, address(namespace))
        return True
    except OSError:   # nobody bound to the name (ConnectionRefusedError), or no AF_UNIX here
        return False


class Listener:
    """Receives e-stop requests in a thread and calls `on_engage()` there (the callee hands it to its node).

    Raises OSError when the name is taken (another executor with this namespace on this host)."""

    def __init__(self, namespace: str, on_engage: Callable[[], None]) -> None:
        self._on_engage = on_engage
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(address(namespace))
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(0.5)   # so close() ends the thread within half a second
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="estop_socket", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(64)
            except socket.timeout:
                continue
            except OSError:
                return
            if data == ENGAGE:
                self._on_engage()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        self._sock.close()
