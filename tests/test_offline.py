"""The test suite is offline: conftest's guard refuses connections to other machines, not to this one."""

import socket
import threading

import pytest

from tests.conftest import NetworkBlocked


@pytest.mark.parametrize("address", [("93.184.215.14", 80), ("2606:4700::6810:84e5", 443, 0, 0), ("8.8.8.8", 53)])
def test_connections_to_other_machines_are_refused(address: tuple) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(NetworkBlocked, match="must not reach"):
        sock.connect(address)
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(NetworkBlocked):
        sock.connect_ex(address)


def test_the_huggingface_hub_is_unreachable() -> None:
    with pytest.raises(OSError):  # the name does not resolve here, or the guard refuses it
        socket.create_connection(("huggingface.co", 443), timeout=2)


def test_connections_to_this_machine_work() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        accepted = threading.Thread(target=lambda: server.accept()[0].close())
        accepted.start()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
        accepted.join(timeout=5)
