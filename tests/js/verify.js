'use strict';
// The independent verifier of pymaild's mail authentication tests: the mailauth
// package (Node.js), which shares no code with dkimpy. Reads a message on standard
// input, asks the tests' DNS server, and prints one JSON object with its verdicts.
// Usage: node verify.js DNSPORT [IP HELO MAILFROM MTA]
const { authenticate } = require('mailauth');
const dns = require('node:dns');

const [port, ip, helo, sender, mta] = process.argv.slice(2);
const resolver = new dns.promises.Resolver({ timeout: 3000, tries: 1 });
resolver.setServers([`127.0.0.1:${port}`]);

const chunks = [];
process.stdin.on('data', chunk => chunks.push(chunk));
process.stdin.on('end', async () => {
    const message = Buffer.concat(chunks);
    const result = await authenticate(message, {
        ip: ip || '127.0.0.1',
        helo: helo || 'localhost',
        sender: sender || '',
        mta: mta || 'verifier.test',
        resolver: (name, rr) => resolver.resolve(name, rr),
        disableBimi: true
    });
    const out = {
        dkim: (result.dkim.results || []).map(r => ({
            domain: r.signingDomain, selector: r.selector, algorithm: r.algo,
            result: r.status.result, comment: r.status.comment || ''
        })),
        spf: result.spf ? result.spf.status.result : null,
        dmarc: result.dmarc ? result.dmarc.status.result : null,
        dmarcPolicy: result.dmarc ? result.dmarc.policy || null : null,
        arc: result.arc ? result.arc.status.result : null
    };
    process.stdout.write(JSON.stringify(out) + '\n');
});
