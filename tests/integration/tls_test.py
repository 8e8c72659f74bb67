"""TLS and mTLS on the gateway (issue 8, docs/security.md), on a real `lifl up`: a CA, a
server certificate for 127.0.0.1 and client certificates are made by the test with the
`cryptography` package. Over HTTPS a round gives numpy's exact FedAvg; plain HTTP, a client
that does not trust the CA, and (mTLS) a client without a certificate of the configured CA
are all refused; bad TLS settings stop `lifl up` with the key named."""
import json
import os
import ssl
import tempfile
import unittest

import numpy as np
from lifl_certs import issue, make_ca, plain_http_answer
from lifl_client import Client
from lifl_harness import Platform, exact_round, failed_so_far, lifl_cli


class TlsTestCase(unittest.TestCase):
    mtls = False

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="lifl-tls-")
        d = self.tmp.name
        ca_key, ca_cert, self.ca = make_ca(d, "ca")
        self.server_cert, self.server_key = issue(d, "server", ca_key, ca_cert, ["127.0.0.1"])
        self.client_cert, self.client_key = issue(d, "client", ca_key, ca_cert)
        other_key, other_cert, _ = make_ca(d, "other-ca")
        self.foreign_cert, self.foreign_key = issue(d, "foreign", other_key, other_cert)
        config = (f"gateway:\n  tls_cert_file: {self.server_cert}\n  tls_key_file: {self.server_key}\n"
                  + (f"  tls_client_ca_file: {self.ca}\n" if self.mtls else ""))
        self.platform = Platform(config=config, tls=self.context(with_cert=self.mtls))
        self.port = int(self.platform.url.rsplit(":", 1)[1])

    def tearDown(self):
        if failed_so_far(self):
            print(f"\n---- lifl log ({self.id()}) ----\n{self.platform.log_tail()}")
        self.platform.stop()
        self.tmp.cleanup()

    def context(self, trust=True, with_cert=False, foreign=False):
        ctx = ssl.create_default_context(cafile=self.ca if trust else None)
        if with_cert:
            ctx.load_cert_chain(*(self.foreign_cert, self.foreign_key) if foreign
                                else (self.client_cert, self.client_key))
        return ctx

    def client(self, **kw):
        c = Client(self.platform.url, tls=self.context(**kw))
        self.addCleanup(c.close)
        return c

    def plain_http_is_refused(self):
        data = plain_http_answer("127.0.0.1", self.port)
        self.assertFalse(data.startswith(b"HTTP/"), f"plain HTTP got an HTTP answer: {data[:80]!r}")


class Tls(TlsTestCase):
    def test_a_round_over_https_is_exact_and_plain_http_is_refused(self):
        exact_round(self, self.client(), "tls", clients=6, seed=21)
        self.plain_http_is_refused()
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.client(trust=False).job("tls")

    def test_the_command_line_speaks_https(self):
        url = self.platform.url
        listed = lifl_cli("job", "list", "--url", url, "--ca-file", self.ca)
        self.assertEqual(json.loads(listed.stdout), [])
        untrusted = lifl_cli("job", "list", "--url", url, check=False)
        self.assertNotEqual(untrusted.returncode, 0)
        self.assertIn("tls_failed", untrusted.stderr)
        plain = lifl_cli("job", "list", "--url", url.replace("https://", "http://"), check=False)
        self.assertNotEqual(plain.returncode, 0)


class MutualTls(TlsTestCase):
    mtls = True

    def test_the_command_line_presents_its_certificate(self):
        url = self.platform.url
        ok = lifl_cli("job", "list", "--url", url, "--ca-file", self.ca, "--cert", self.client_cert,
                      "--key", self.client_key)
        self.assertEqual(json.loads(ok.stdout), [])
        for extra in ([], ["--cert", self.foreign_cert, "--key", self.foreign_key]):
            refused = lifl_cli("job", "list", "--url", url, "--ca-file", self.ca, *extra, check=False)
            self.assertNotEqual(refused.returncode, 0, extra)

    def test_only_clients_with_a_certificate_of_the_ca_are_served(self):
        exact_round(self, self.client(with_cert=True), "mtls", clients=4, seed=22)
        for kw in ({}, {"with_cert": True, "foreign": True}):
            with self.subTest(**kw):
                with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                    self.client(**kw).job("mtls")
        self.plain_http_is_refused()


class BadTlsConfig(unittest.TestCase):
    def test_bad_tls_settings_stop_lifl_up_with_the_key_named(self):
        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, "missing.pem")
            for config, needle in ((f"gateway:\n  tls_cert_file: {missing}\n", "go together"),
                                   (f"gateway:\n  tls_cert_file: {missing}\n  tls_key_file: {missing}\n",
                                    "gateway.tls_cert_file"),
                                   (f"gateway:\n  tls_client_ca_file: {missing}\n", "mTLS is TLS")):
                with self.subTest(config=config):
                    with self.assertRaises(Exception) as ctx:
                        Platform(config=config).stop()
                    self.assertIn(needle, str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
