"""A PEP 517 build backend for the single-module lifl-client package that needs no other
package: it writes the wheel (a zip with the module and its .dist-info) itself, so that
`pip install ./clients/python` works without network access."""
import base64
import hashlib
import os
import zipfile

NAME, VERSION, MODULE = "lifl_client", "0.1.0", "lifl_client.py"
HERE = os.path.dirname(os.path.abspath(__file__))
DIST_INFO = f"{NAME}-{VERSION}.dist-info"

METADATA = f"""Metadata-Version: 2.1
Name: lifl-client
Version: {VERSION}
Summary: Client for the LIFL federated aggregation platform: push updates, pull models
Requires-Python: >=3.9
Requires-Dist: numpy
"""
WHEEL = """Wheel-Version: 1.0
Generator: lifl_build_backend
Root-Is-Purelib: true
Tag: py3-none-any
"""


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, DIST_INFO), exist_ok=True)
    for name, text in (("METADATA", METADATA), ("WHEEL", WHEEL)):
        with open(os.path.join(metadata_directory, DIST_INFO, name), "w") as f:
            f.write(text)
    return DIST_INFO


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    wheel = f"{NAME}-{VERSION}-py3-none-any.whl"
    with open(os.path.join(HERE, MODULE), "rb") as f:
        module = f.read()
    files = {MODULE: module, f"{DIST_INFO}/METADATA": METADATA.encode(),
             f"{DIST_INFO}/WHEEL": WHEEL.encode()}
    record = [_record_line(p, d) for p, d in files.items()] + [f"{DIST_INFO}/RECORD,,"]
    files[f"{DIST_INFO}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel
