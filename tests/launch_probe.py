"""Run as `python -m launch_probe` from the repository root (see test_layout)."""

import ssl

import semisup

print(type(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)).__name__, semisup.__name__)
