#!/usr/bin/python3
"""Checks that a relay DKIM-signed what it relayed: every message that smtp-sink dumped
(relay-bench.sh run --dump DIR) must carry a DKIM-Signature that verifies with the given
key record. The verifier is dkimpy (Debian's python3-dkim), not the code under test, and
the record is given on the command line, so no DNS is needed.

usage: check-signing.py DIR RECORD_FILE
  RECORD_FILE: the selector's TXT record, as opendkim-genkey writes it (bench.txt, a zone
  line with quoted strings) or as run-tidegate.sh keeps it (dkim-bench.record, the strings
  joined by commas for dnsmasq).
Prints one summary line; exits 1 if any message is unsigned or fails.
"""
import collections, os, re, sys

import dkim  # python3-dkim

if len(sys.argv) != 3:
    sys.exit(__doc__)
directory, record_file = sys.argv[1], sys.argv[2]
text = open(record_file).read()
quoted = re.findall(r'"([^"]*)"', text)
record = ("".join(quoted) if quoted else text.strip().replace(",", "")).encode()


def dnsfunc(name, timeout=5):
    return record


counts = collections.Counter()
tags = collections.Counter()
for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
        message = f.read()
    # smtp-sink writes LF line ends and its own X-*/Received fields on top; DKIM does not
    # sign those, and relaxed canonicalisation does not mind the line ends.
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signatures = re.findall(rb"(?mi)^DKIM-Signature:((?:.*\r\n)(?:[ \t].*\r\n)*)", message)
    if not signatures:
        counts["unsigned"] += 1
        continue
    sig = re.sub(rb"\s+", b"", signatures[0]).decode()
    fields = dict(kv.split("=", 1) for kv in sig.split(";") if "=" in kv)
    b = fields.get("b", "")
    tags[f"a={fields.get('a')} c={fields.get('c')} d={fields.get('d')} s={fields.get('s')} "
         f"bits={(len(b) * 3 // 4 - b.count('=')) * 8}"] += 1
    counts["pass" if dkim.verify(message, dnsfunc=dnsfunc) else "fail"] += 1
total = sum(counts.values())
print(f"{directory}: {total} messages: {counts['pass']} signed and verified, "
      f"{counts['fail']} signed but failing, {counts['unsigned']} unsigned; "
      + "; ".join(f"{k} x{v}" for k, v in tags.items()))
sys.exit(0 if total and counts["pass"] == total else 1)
