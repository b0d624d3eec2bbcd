"""SMTP: the inbound and submission server, delivery avatars and aliases.

- L{pymaild.smtp.server}: L{SMTPFactory} / L{SMTPServer}, the ESMTP protocol (MX and
  submission roles), made of L{pymaild.smtp.framing}, L{pymaild.smtp.replies} (over
  L{pymaild.smtp.fastreply}), L{pymaild.smtp.login} and L{pymaild.smtp.spool}; the
  transaction it owns is L{pymaild.smtp.transaction.Transaction}.
- L{pymaild.smtp.delivery}: L{DeliveryAvatars}, the realm's C{IMessageDelivery}
  factory; sender checks and durable delivery, with L{pymaild.smtp.resolver}
  (recipient resolution) and L{pymaild.smtp.copies} (quotas and the local copies).
- L{pymaild.smtp.aliases}: the aliases file.
"""
