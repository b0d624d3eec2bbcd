"""The admin web page in a real browser: Debian's headless Chromium driven by Selenium.

A real ``twistd -n pymaild`` serves C{/admin/} on its HTTPS listener. The browser logs
in as the admin, adds a user (who can then log in over IMAP), sees a queued message and
retries it (the queue makes a new attempt at once), and logs out. Then the defences:
a POST without the session's CSRF token, a cross-site form posted from a page on
another origin, an admin action by a user who is not admin, the page over plain HTTP,
and a wrong password: each refused, and nothing changes.
"""

from __future__ import annotations

import http.client
import http.server
import imaplib
import os
import shutil
import smtplib
import ssl
import tempfile
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pymaild.auth.passwd import PasswdFile
from pymaild.smtp.queuespool import Spool
from tests.support import (
    ServerProcess,
    dataWithUsers,
    freePort,
    missing,
    requireClient,
    setExtraFields,
)

ADMIN = "postmaster@example.org"
ADMIN_PW = "admin-secret-pw"
ALICE = "alice@example.org"
ALICE_PW = "alice-secret-pw"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--ignore-certificate-errors", "--disable-dev-shm-usage")


def submit(d: Any, element: Any) -> None:
    """Click a form's button and wait until the next page has replaced this one."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    # A mark on the old page's window: a new document starts without it.  Checking
    # the old <html> element for staleness races with the navigation (chromedriver
    # may answer "Node with given id does not belong to the document").
    d.execute_script("window.pymaildOldPage = true;")
    element.click()
    WebDriverWait(d, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda drv: drv.execute_script(
            "return window.pymaildOldPage === undefined"
            " && document.readyState === 'complete';"))


def browser(profile: str) -> object:
    """A headless Chromium under Selenium, with a profile of its own."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium", "pip install selenium")
    chromium = requireClient("chromium")
    driver = requireClient("chromedriver", "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


class AdminPageTests(SynchronousTestCase):
    """The admin page, driven by a browser and by hand-made requests."""

    def setUp(self) -> None:
        """A server with an admin and a user, and a queued message that cannot leave."""
        base, self.data = dataWithUsers(self, {ADMIN: ADMIN_PW, ALICE: ALICE_PW})
        setExtraFields(os.path.join(self.data, "passwd"), ALICE,
                       "userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=100")
        self.passwd = PasswdFile(os.path.join(self.data, "passwd"))
        config = os.path.join(base, "pymaild.toml")
        self.aliasesPath = os.path.join(base, "aliases")
        with open(self.aliasesPath, "w") as f:
            f.write("# kept as written\ninfo: postmaster\n")
        with open(config, "w") as f:
            f.write(f'[relay]\nsmarthost = "127.0.0.1:{freePort()}"\n'
                    'smarthost_tls = "opportunistic"\n'
                    f'[smtp]\naliases = "{self.aliasesPath}"\n')
        self.server = ServerProcess(self.data, "example.org",
                                    listeners=("smtp", "submission", "imap", "http",
                                               "https"),
                                    extra=["--config", config])
        self.server.start()
        self.addCleanup(self.server.stop)
        self.base = f"https://127.0.0.1:{self.server.ports['https']}"

    def queueOne(self) -> str:
        """Submit a message to a remote address; its queue id once it is queued."""
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as s:
            s.starttls(context=ssl._create_unverified_context())
            s.login(ALICE, ALICE_PW)
            s.sendmail(ALICE, ["far@remote.example"],
                       f"From: {ALICE}\r\nSubject: queued\r\n\r\nbody\r\n".encode())
        spool = Spool(os.path.join(self.data, "queue"))
        deadline = time.monotonic() + 30
        while True:
            names = os.listdir(spool.envDir) if os.path.isdir(spool.envDir) else []
            for name in names:
                env = spool.read(name)
                if env is not None and env.recipients[0].attempts >= 1:
                    return env.id
            self.assertLess(time.monotonic(), deadline, "message not queued and tried")
            time.sleep(0.1)

    def attempts(self, qid: str) -> int:
        """How often the queue tried the message's recipient."""
        env = Spool(os.path.join(self.data, "queue")).read(qid)
        return env.recipients[0].attempts if env else -1

    def driver(self) -> object:
        """A new browser, quit at the end of the test."""
        profile = tempfile.mkdtemp(prefix="pymaild-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        d = browser(profile)
        self.addCleanup(d.quit)  # type: ignore[attr-defined]
        d.set_page_load_timeout(30)  # type: ignore[attr-defined]
        return d

    def login(self, d: object, user: str, password: str) -> None:
        """Log in through the form."""
        from selenium.webdriver.common.by import By

        d.get(self.base + "/admin/")  # type: ignore[attr-defined]
        d.find_element(By.ID, "user").send_keys(user)  # type: ignore[attr-defined]
        d.find_element(By.ID, "password").send_keys(password)  # type: ignore[attr-defined]
        submit(d, d.find_element(By.ID, "login"))  # type: ignore[attr-defined]

    def test_adminSession(self) -> None:
        """Log in, see the users with their quotas, add a user, see the queued message,
        retry it, log out."""
        from selenium.webdriver.common.by import By

        qid = self.queueOne()
        d = self.driver()
        self.login(d, ADMIN, ADMIN_PW)
        body = d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
        self.assertIn(f"Logged in as {ADMIN} (admin)", body)
        cookie = d.get_cookie("pymaild_session")  # type: ignore[attr-defined]
        self.assertTrue(cookie["secure"] and cookie["httpOnly"])
        self.assertEqual(cookie["sameSite"], "Strict")

        users = d.find_element(By.ID, "users").text  # type: ignore[attr-defined]
        self.assertIn(f"{ALICE} 0 B of 1 GiB (0%), 0 of 100 messages (0%)", users)
        self.assertIn(f"{ADMIN} 0 B, 0 messages", users)

        d.find_element(By.ID, "new-address").send_keys("carol@example.org")  # type: ignore
        d.find_element(By.ID, "new-password").send_keys("carol-secret-pw")  # type: ignore
        submit(d, d.find_element(By.ID, "add-user"))  # type: ignore[attr-defined]
        body = d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
        self.assertIn("Added carol@example.org.", body)
        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"])
        imap.login("carol@example.org", "carol-secret-pw")
        imap.logout()

        row = d.find_element(By.ID, f"q-{qid}").text  # type: ignore[attr-defined]
        self.assertIn("far@remote.example", row)
        before = self.attempts(qid)
        submit(d, d.find_element(By.ID, f"retry-{qid}"))  # type: ignore[attr-defined]
        self.assertIn("will be tried again now",
                      d.find_element(By.TAG_NAME, "body").text)  # type: ignore
        deadline = time.monotonic() + 30
        while self.attempts(qid) <= before:
            self.assertLess(time.monotonic(), deadline, "the retry made no new attempt")
            time.sleep(0.1)
        self.assertIn(f"q-{qid}", d.page_source)  # type: ignore[attr-defined]

        submit(d, d.find_element(By.ID, "logout"))  # type: ignore[attr-defined]
        self.assertTrue(d.find_elements(By.ID, "login"))  # type: ignore[attr-defined]
        # The old session is gone on the server too.
        status, _ = self.post("/admin/users/add", {"address": "x@example.org",
                                                   "password": "xxxxxxxxxx",
                                                   "csrf": "whatever"},
                              cookie=f"pymaild_session={cookie['value']}")
        self.assertEqual(status, 403)
        self.assertIsNone(self.passwd.lookup("x@example.org"))

    def post(self, path: str, fields: dict[str, str], cookie: str = "",
             origin: str | None = None) -> tuple[int, bytes]:
        """A form POST over HTTPS by hand; status and body."""
        from urllib.parse import urlencode

        conn = http.client.HTTPSConnection("127.0.0.1", self.server.ports["https"],
                                           context=ssl._create_unverified_context(),
                                           timeout=30)
        self.addCleanup(conn.close)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if cookie:
            headers["Cookie"] = cookie
        if origin:
            headers["Origin"] = origin
        conn.request("POST", path, body=urlencode(fields), headers=headers)
        r = conn.getresponse()
        return r.status, r.read()

    def test_csrfAndCrossSite(self) -> None:
        """A POST without the token, or from another site's page, changes nothing."""
        d = self.driver()
        self.login(d, ADMIN, ADMIN_PW)
        sid = d.get_cookie("pymaild_session")["value"]  # type: ignore[attr-defined]
        status, body = self.post("/admin/users/add",
                                 {"address": "evil@example.org", "password": "x" * 12},
                                 cookie=f"pymaild_session={sid}")
        self.assertEqual((status, body), (403, b"Bad or missing form token\n"))
        status, _ = self.post("/admin/users/add",
                              {"address": "evil@example.org", "password": "x" * 12,
                               "csrf": "x"}, cookie=f"pymaild_session={sid}",
                              origin="https://attacker.example")
        self.assertEqual(status, 403)

        # A page on another origin that posts a form to the admin page.
        page = (f'<html><body><form id="f" method="post" action="{self.base}/admin/users/add">'
                '<input name="address" value="evil@example.org">'
                '<input name="password" value="evil-password">'
                '<input name="csrf" value="guess"></form>'
                '<script>document.getElementById("f").submit()</script></body></html>')

        class Evil(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page.encode())

            def log_message(self, *args: object) -> None:
                pass

        evil = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Evil)
        evil.daemon_threads = True
        thread = threading.Thread(target=evil.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(evil.server_close)
        self.addCleanup(evil.shutdown)
        d.get(f"http://127.0.0.2:{evil.server_address[1]}/")  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        from selenium.webdriver.common.by import By

        while "127.0.0.1" not in d.current_url:  # type: ignore[attr-defined]
            self.assertLess(time.monotonic(), deadline, "the form was not posted")
            time.sleep(0.1)
        text = d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
        self.assertEqual(text, "Cross-site request refused")
        self.assertIsNone(self.passwd.lookup("evil@example.org"))

    def test_userIsNotAdmin(self) -> None:
        """A user sees only the password form; an admin action with a valid token is
        refused; changing one's own password works (and needs the current one)."""
        from selenium.webdriver.common.by import By

        d = self.driver()
        self.login(d, ALICE, ALICE_PW)
        body = d.find_element(By.TAG_NAME, "body").text  # type: ignore[attr-defined]
        self.assertIn(f"Logged in as {ALICE}.", body)
        self.assertNotIn("Users", body)
        sid = d.get_cookie("pymaild_session")["value"]  # type: ignore[attr-defined]
        csrf = d.find_element(By.NAME, "csrf").get_attribute("value")  # type: ignore
        status, body2 = self.post("/admin/users/add",
                                  {"address": "evil@example.org", "password": "x" * 12,
                                   "csrf": csrf}, cookie=f"pymaild_session={sid}")
        self.assertEqual((status, body2), (403, b"Only admins may do this\n"))
        d.find_element(By.NAME, "current").send_keys("wrong-password")  # type: ignore
        d.find_element(By.NAME, "new").send_keys("alice-new-password")  # type: ignore
        submit(d, d.find_element(By.XPATH, "//button[text()='Change my password']"))
        self.assertIn("the current password is wrong",
                      d.find_element(By.TAG_NAME, "body").text)  # type: ignore
        d.find_element(By.NAME, "current").send_keys(ALICE_PW)  # type: ignore
        d.find_element(By.NAME, "new").send_keys("alice-new-password")  # type: ignore
        submit(d, d.find_element(By.XPATH, "//button[text()='Change my password']"))
        self.assertIn("Your password was changed.",
                      d.find_element(By.TAG_NAME, "body").text)  # type: ignore
        self.assertTrue(self.passwd.verify(ALICE, "alice-new-password"))

    def test_aliases(self) -> None:
        """The admin sees the aliases file's entries, adds one (mail to it is accepted
        at once) and deletes it (refused again); the file's comment stays."""
        from selenium.webdriver.common.by import By

        def rcpt(address: str) -> int:
            with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
                s.ehlo("client.example")
                s.mail("someone@remote.example")
                return s.rcpt(address)[0]

        self.assertEqual(rcpt("sales@example.org"), 550)
        d: Any = self.driver()
        self.login(d, ADMIN, ADMIN_PW)
        rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "tr.alias")]
        self.assertEqual([r.split()[:2] for r in rows], [["info", "postmaster"]])
        d.find_element(By.ID, "alias-key").send_keys("sales@example.org")
        d.find_element(By.ID, "alias-targets").send_keys("alice, postmaster")
        submit(d, d.find_element(By.ID, "alias-add"))
        self.assertIn("Added alias sales@example.org.", d.find_element(By.TAG_NAME, "body").text)
        self.assertEqual(rcpt("sales@example.org"), 250)
        submit(d, d.find_element(By.ID, "alias-delete-sales@example.org"))
        self.assertIn("Deleted alias sales@example.org.",
                      d.find_element(By.TAG_NAME, "body").text)
        time.sleep(1.1)  # the server re-checks the file at most once a second
        self.assertEqual(rcpt("sales@example.org"), 550)
        with open(self.aliasesPath) as f:
            self.assertEqual(f.read(), "# kept as written\ninfo: postmaster\n")
        status, _ = self.post("/admin/aliases/add", {"key": "x", "targets": "alice"},
                              cookie="pymaild_session=" + d.get_cookie("pymaild_session")["value"])
        self.assertEqual(status, 403)  # no CSRF token

    def test_vacation(self) -> None:
        """A user turns a vacation reply on: mail from outside is answered (the reply
        is queued for the sender); off again, it is not."""
        from selenium.webdriver.common.by import By

        d: Any = self.driver()
        self.login(d, ALICE, ALICE_PW)
        self.assertIn("Your vacation reply is off", d.find_element(By.ID, "vacation-state").text)
        d.find_element(By.ID, "vacation-on").click()
        d.find_element(By.ID, "vacation-subject").send_keys("Out of office")
        d.find_element(By.ID, "vacation-message").send_keys("Back on Monday.")
        submit(d, d.find_element(By.ID, "vacation-save"))
        self.assertIn("Your vacation reply is on", d.find_element(By.ID, "vacation-state").text)

        def replies() -> list[Any]:
            envelopes, _ = Spool(os.path.join(self.data, "queue")).envelopes()
            return [e for e in envelopes if e.sender == ""
                    and [r.address for r in e.recipients] == ["far@remote.example"]]

        def mail(sender: str) -> None:
            with smtplib.SMTP("127.0.0.1", self.server.ports["smtp"], timeout=30) as s:
                s.sendmail(sender, [ALICE],
                           f"From: {sender}\r\nTo: {ALICE}\r\nSubject: hi\r\n"
                           f"Message-ID: <{sender}>\r\n\r\nbody\r\n".encode())

        mail("far@remote.example")
        deadline = time.monotonic() + 30
        while not replies():
            self.assertLess(time.monotonic(), deadline, "no vacation reply queued")
            time.sleep(0.1)
        [reply] = replies()
        spool = Spool(os.path.join(self.data, "queue"))
        with open(spool.messagePath(reply.id), "rb") as f:
            data = f.read()
        self.assertIn(b"Subject: Out of office", data)
        self.assertIn(b"Auto-Submitted: auto-replied", data)

        d.find_element(By.ID, "vacation-on").click()
        submit(d, d.find_element(By.ID, "vacation-save"))
        self.assertIn("Your vacation reply is off", d.find_element(By.ID, "vacation-state").text)
        self.assertEqual(d.find_element(By.ID, "vacation-subject").get_attribute("value"),
                         "Out of office")
        mail("other@remote.example")
        time.sleep(1)
        envelopes, _ = spool.envelopes()
        self.assertFalse([e for e in envelopes if e.sender == "" and
                          [r.address for r in e.recipients] == ["other@remote.example"]])

    def test_wrongPasswordAndPlainHTTP(self) -> None:
        """A wrong password gets the form again (401); /admin/ over HTTP redirects to
        HTTPS and never serves the page."""
        d = self.driver()
        self.login(d, ADMIN, "not-the-password")
        from selenium.webdriver.common.by import By

        self.assertIn("Wrong address or password.",
                      d.find_element(By.TAG_NAME, "body").text)  # type: ignore
        self.assertIsNone(d.get_cookie("pymaild_session"))  # type: ignore[attr-defined]
        conn = http.client.HTTPConnection("127.0.0.1", self.server.ports["http"], timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", "/admin/", headers={"Host": "mail.example.org"})
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.status, 301)
        self.assertTrue(r.getheader("location").startswith("https://mail.example.org:"))


class AdminDomainTests(SynchronousTestCase):
    """The domains part of the admin page: DKIM key sets and the DNS records, checked
    against a real DNS server (tests/dnsserver.py in a process of its own)."""

    def setUp(self) -> None:
        """A DNS server holding some of example.org's records, right and wrong, and a
        server with a DKIM key set C{s1} whose RSA record is published."""
        import json
        import subprocess
        import sys

        from pymaild.mailauth.dkimkeys import DKIMKeys
        from tests.support import ROOT, stopProcess

        base, self.data = dataWithUsers(self, {ADMIN: ADMIN_PW})
        keys = DKIMKeys(os.path.join(self.data, "dkim")).keygen("example.org", "s1")
        rsa = next(k for k in keys if k.selector == "s1-rsa")
        zones = {"example.org": {
            "example.org": [["TXT", "v=spf1 mx -all"]],
            "_dmarc.example.org": [["TXT", "v=DMARC1; p=none"]],
            "s1-rsa._domainkey.example.org": [["TXT", rsa.dnsValue]],
            "mail.example.org": [["A", "127.0.0.1"]],
        }}
        zoneFile, portFile = os.path.join(base, "zones.json"), os.path.join(base, "dns.port")
        with open(zoneFile, "w") as f:
            json.dump(zones, f)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        dns = subprocess.Popen([sys.executable, "-m", "tests.dnsserver", zoneFile, portFile],
                               cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        self.addCleanup(stopProcess, dns)
        deadline = time.monotonic() + 30
        while not os.path.exists(portFile):
            self.assertIsNone(dns.poll(), "the DNS server exited")
            self.assertLess(time.monotonic(), deadline, "the DNS server did not start")
            time.sleep(0.05)
        with open(portFile) as f:
            port = int(f.read())
        config = os.path.join(base, "pymaild.toml")
        with open(config, "w") as f:
            f.write(f'[relay]\ndns_servers = ["127.0.0.1:{port}"]\n')
        self.server = ServerProcess(self.data, "example.org", listeners=("https",),
                                    extra=["--config", config])
        self.server.start()
        self.addCleanup(self.server.stop)
        self.pages = AdminPageTests("login")
        self.pages.server = self.server
        self.pages.base = f"https://127.0.0.1:{self.server.ports['https']}"

    def row(self, d: Any, name: str, kind: str = "TXT") -> str:
        """The text of the DNS table's row for owner C{name} and type C{kind}."""
        from selenium.webdriver.common.by import By

        rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "tr.record")
                if r.text.split()[:2] == [name, kind]]
        self.assertEqual(len(rows), 1, name)
        return rows[0]

    def test_keysAndCheck(self) -> None:
        """The records of every key set are listed; the check tells right, missing and
        differing records apart as the DNS server holds them; a new key set appears with
        its records and a retired one goes away, on disk too."""
        from selenium.webdriver.common.by import By

        profile = tempfile.mkdtemp(prefix="pymaild-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        d: Any = browser(profile)
        self.addCleanup(d.quit)
        d.set_page_load_timeout(30)
        self.pages.login(d, ADMIN, ADMIN_PW)
        self.assertEqual(d.find_element(By.ID, "dkim-example.org").text.split()[0], "s1")
        for name in ("s1-rsa._domainkey.example.org.", "s1-ed25519._domainkey.example.org.",
                     "_mta-sts.example.org."):
            self.row(d, name)
        self.row(d, "_submissions._tcp.example.org.", "SRV")
        submit(d, d.find_element(By.ID, "dns-check-example.org"))
        self.assertIn("records are missing or differ", d.find_element(By.TAG_NAME, "body").text)
        self.assertTrue(self.row(d, "example.org.").endswith("ok"))
        self.assertIn("missing", self.row(d, "example.org.", "MX"))
        self.assertTrue(self.row(d, "s1-rsa._domainkey.example.org.").endswith("ok"))
        self.assertIn("missing", self.row(d, "s1-ed25519._domainkey.example.org."))
        self.assertIn("differs", self.row(d, "_dmarc.example.org."))

        d.find_element(By.CSS_SELECTOR, "#domain-example\\.org ~ form input[name=selector]"
                       ).send_keys("s2")
        submit(d, d.find_element(By.ID, "dkim-new-example.org"))
        self.assertIn("Made DKIM key set s2 for example.org",
                      d.find_element(By.TAG_NAME, "body").text)
        self.row(d, "s2-rsa._domainkey.example.org.")
        submit(d, d.find_element(By.ID, "retire-example.org-s1"))
        self.assertIn("Retired DKIM key set s1", d.find_element(By.TAG_NAME, "body").text)
        self.assertEqual(d.find_element(By.ID, "dkim-example.org").text.split()[0], "s2")
        self.assertFalse([r for r in d.find_elements(By.CSS_SELECTOR, "tr.record")
                          if r.text.startswith("s1-")])
        dkim = os.path.join(self.data, "dkim", "example.org")
        self.assertTrue(os.path.isdir(os.path.join(dkim, "retired", "s1")))
        self.assertTrue(os.path.isdir(os.path.join(dkim, "s2")))
