"""wss:// with --tls-cert/--tls-key, using a self-signed certificate made for the test."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from tests.wsharness import collect, noise_pcm, running_server, send_audio, settings_for


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_wss_round_trip(chatty_checkpoint: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        settings = settings_for(chatty_checkpoint, "--tls-cert", str(cert), "--tls-key", str(key))
        async with running_server(settings) as srv:
            url = srv.ws_url.replace("ws://127.0.0.1", "wss://localhost")
            async with connect(url, ssl=client_ctx, compression=None) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate_hz": 8000, "encoding": "pcm_s16le",
                                          "channels": 1}))
                assert json.loads(await ws.recv())["type"] == "ready"
                await send_audio(ws, noise_pcm(0.5))
                await ws.send(json.dumps({"type": "stop"}))
                assert (await collect(ws))[-1]["type"] == "end"

    asyncio.run(main())
