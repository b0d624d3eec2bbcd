"""Authentication: the passwd file, the twisted.cred checker and realm, login penalties.

- L{pymaild.auth.passwd}: Dovecot passwd-file users, argon2id hashing, rehash on login.
- L{pymaild.auth.checker}: L{PasswdChecker}, an C{IUsernamePassword} checker that
  verifies in a thread pool.
- L{pymaild.auth.realm}: L{MailRealm}, avatar factories per protocol interface.
- L{pymaild.auth.penalty}: L{AuthPenalty} and L{AuthGate}, Dovecot-style delays after
  failed logins.
- L{pymaild.auth.policy}: L{cleartextAllowed}, when plaintext passwords are accepted.
- L{pymaild.auth.directory}: L{Directory}, recipient address to local accounts.
"""
