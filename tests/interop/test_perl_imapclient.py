"""COMPRESS=DEFLATE with an independent client: Perl's Mail::IMAPClient (its
C{compress} method: raw DEFLATE, C{Z_PARTIAL_FLUSH} from the client, inflating what we
send), after STARTTLS and on an implicit-TLS listener, against pymaild's IMAP server in
the test's reactor (L{tests.test_imap_clients.ClientServer}).

neomutt, which the issue names, is built without C{imap_deflate} in Debian, and
interimap needs QRESYNC; Mail::IMAPClient is the DEFLATE client Debian has.

Without it (C{apt-get install libmail-imapclient-perl}) the tests are skipped, except
under CI (C{CI=true}) where a missing client is a failure.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from tests.support import missing, requireClient
from tests.test_imap_clients import ClientServer
from tests.test_imap_helpers import ALICE, ALICE_PW, makeMessage

SCRIPT = r"""
use strict;
use warnings;
use Mail::IMAPClient;
use Digest::MD5 qw(md5_hex);
my ($port, $user, $pass, $ca, $mode) = @ARGV;
my @tls = (SSL_ca_file => $ca, SSL_verifycn_name => 'localhost', SSL_verify_mode => 1);
my $imap = Mail::IMAPClient->new(
    Server => '127.0.0.1', Port => $port, User => $user, Password => $pass, Uid => 1,
    ($mode eq 'starttls' ? (Starttls => [@tls]) : (Ssl => [@tls])),
) or die "connect/login: $@\n";
my $compress = $imap->has_capability('COMPRESS') || [];
print "COMPRESS @$compress\n";
$imap->compress or die "compress: " . $imap->LastError . "\n";
$imap->select('INBOX') or die "select: " . $imap->LastError . "\n";
my @uids = $imap->messages or die "messages: " . $imap->LastError . "\n";
my $body = $imap->message_string($uids[0]) // die "fetch: " . $imap->LastError . "\n";
print "MD5 ", md5_hex($body), "\n";
$imap->append_string('INBOX', "Subject: from perl\r\n\r\nHello over DEFLATE.\r\n")
    or die "append: " . $imap->LastError . "\n";
$imap->set_flag('Flagged', $uids[0]) or die "store: " . $imap->LastError . "\n";
my $flagged = $imap->search('FLAGGED') or die "search: " . $imap->LastError . "\n";
print "FLAGGED @$flagged\n";
print "COUNT ", $imap->message_count('INBOX'), "\n";
$imap->logout or die "logout: " . $imap->LastError . "\n";
print "DONE\n";
"""


class MailIMAPClientTests(TestCase):
    """Mail::IMAPClient's COMPRESS against pymaild."""

    timeout = 120

    def setUp(self) -> None:
        """Find perl and Mail::IMAPClient; start the server with a 2 MB message."""
        self.perl = requireClient("perl")
        found = subprocess.run([self.perl, "-MMail::IMAPClient", "-MIO::Socket::SSL",
                                "-e", "1"], capture_output=True)
        if found.returncode != 0:
            missing("Mail::IMAPClient",
                    "apt-get install libmail-imapclient-perl libio-socket-ssl-perl")
        self.srv = ClientServer(self, cleartext="tls-only")
        self.message = makeMessage("big", os.urandom(1 << 20).hex().encode() + b"\r\n")
        self.srv.store.deliver([ALICE], self.message)
        self.sessions: list[Any] = []
        factory = self.srv.port.factory
        build = factory.buildProtocol

        def recording(addr: Any) -> Any:
            proto = build(addr)
            self.sessions.append(proto)
            return proto

        factory.buildProtocol = recording
        self.script = os.path.join(os.path.abspath(self.mktemp()) + ".pl")
        with open(self.script, "w") as f:
            f.write(SCRIPT)

    @defer.inlineCallbacks
    def session(self, port: int, mode: str) -> Any:
        """Run the client; check what it saw and that the session was compressed."""
        out, err, code = yield utils.getProcessOutputAndValue(
            self.perl, [self.script, str(port), ALICE, ALICE_PW, self.srv.cert, mode],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        self.assertEqual(code, 0, (out, err))
        lines = out.decode().splitlines()
        self.assertIn("COMPRESS DEFLATE", lines)
        self.assertIn("MD5 " + hashlib.md5(self.message).hexdigest(), lines)
        self.assertIn("FLAGGED 1", lines)
        self.assertIn("COUNT 2", lines)
        self.assertEqual(lines[-1], "DONE")
        self.assertTrue(self.sessions)
        self.assertTrue(all(p._inflater is not None for p in self.sessions))
        folder = self.srv.store.account(ALICE).folder("INBOX")
        messages = folder.scan().messages
        self.assertEqual(len(messages), 2)
        with folder.open(messages[1]) as f:
            self.assertIn(b"Hello over DEFLATE.", f.read())

    def test_afterStartTLS(self) -> Any:
        """STARTTLS (the server allows no cleartext login), LOGIN, COMPRESS, then a 2 MB
        FETCH, APPEND, STORE, SEARCH and STATUS through DEFLATE."""
        return self.session(self.srv.portNumber, "starttls")

    def test_implicitTLS(self) -> Any:
        """The same on a listener that is TLS from the first byte (the imaps port)."""
        factory = self.srv.port.factory
        factory.implicitTLS = True
        port = reactor.listenTCP(0, TLSMemoryBIOFactory(factory.tlsContext, False, factory),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return self.session(port.getHost().port, "ssl")
