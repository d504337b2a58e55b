#!/usr/bin/python3
"""A loopback endpoint that checks AWS Signature Version 4 the way AWS does.

It recomputes the signature of every request it receives from the known
secret (AWS's published algorithm, written from the specification with
hmac/hashlib) and answers 200 `{}` when it matches, 403 with an AWS-style
error naming the mismatch otherwise. The canonical request is printed to
stderr on a mismatch, to debug a signer.

usage: sigv4_endpoint.py --port-file F --key AKID --secret S --region R
                         --service dynamodb [--token T]
The chosen port is written to F once the socket listens.
"""
import argparse
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import sys
import urllib.parse


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def hmac_sha256(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def canonical_query(query):
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    enc = [(urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~")) for k, v in pairs]
    return "&".join(f"{k}={v}" for k, v in sorted(enc))


def verify(args, method, path, headers, body):
    """'' when the request is signed correctly, else what is wrong."""
    auth = headers.get("authorization", "")
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                     r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})", auth)
    if not m:
        return "MissingAuthenticationToken: no AWS4-HMAC-SHA256 Authorization header"
    key, day, region, service, signed, signature = m.groups()
    if key != args.key:
        return f"UnrecognizedClientException: unknown access key {key}"
    if (region, service) != (args.region, args.service):
        return f"InvalidSignatureException: scope {region}/{service}, expected {args.region}/{args.service}"
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "IncompleteSignatureException: bad or missing X-Amz-Date"
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 900 or day != amz_date[:8]:
        return "InvalidSignatureException: signature date out of range"
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names or names != sorted(names):
        return "InvalidSignatureException: host and x-amz-date must be signed, names sorted"
    if args.token and headers.get("x-amz-security-token") != args.token:
        return "UnrecognizedClientException: missing or wrong X-Amz-Security-Token"
    if not args.token and "x-amz-security-token" in headers:
        return "UnrecognizedClientException: unexpected X-Amz-Security-Token"
    url = urllib.parse.urlsplit(path)
    canon_headers = "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in names)
    canonical = "\n".join([method, urllib.parse.quote(url.path or "/", safe="/-_.~"), canonical_query(url.query),
                           canon_headers, signed, sha256_hex(body)])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, sha256_hex(canonical.encode())])
    k = hmac_sha256(("AWS4" + args.secret).encode(), day)
    for part in (region, service, "aws4_request"):
        k = hmac_sha256(k, part)
    expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        sys.stderr.write(f"signature mismatch; canonical request:\n{canonical}\n---\n")
        return "InvalidSignatureException: The request signature we calculated does not match"
    return ""


def main():
    ap = argparse.ArgumentParser()
    for opt in ("--port-file", "--key", "--secret", "--region", "--service"):
        ap.add_argument(opt, required=True)
    ap.add_argument("--token", default="")
    args = ap.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            why = verify(args, self.command, self.path, headers, body)
            if why:
                code, msg = why.split(": ", 1)
                out, status = json.dumps({"__type": "com.amazon.coral.service#" + code, "message": msg}), 403
            else:
                out, status = "{}", 200
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out.encode())

        do_POST = do_GET = do_PUT = answer

        def log_message(self, fmt, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
