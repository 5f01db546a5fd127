#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the test fixtures and the unit-test
tables (botocore-signed requests, AWS documentation examples, config/*.toml). Deterministic; run
from anywhere: python3 fuzz/make_seeds.py. The harness formats are described in fuzz/src/harness.rs."""
import hashlib, hmac, json, os, random, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
rng = random.Random(8)


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def request(method, target, now, headers, sign=False):
    lines = [("!" if sign else "") + method, target, now]
    lines += [f"{k}: {v}" for k, v in headers]
    return "\n".join(lines) + "\n"


shutil.rmtree(OUT, ignore_errors=True)

# --- SigV4 header and presigned: botocore-signed fixtures --------------------------------------
fixtures = [json.loads(l) for l in open(os.path.join(ROOT, "tests/fixtures/sigv4/botocore_requests.jsonl")) if l.strip()]
for kind, target, count in (("header", "sigv4_header", 18), ("query", "sigv4_presigned", 18)):
    cases = [c for c in fixtures if c["kind"] == kind]
    # Shortest first within a spread of methods and addressing styles: small seeds mutate faster.
    cases.sort(key=lambda c: len(json.dumps(c)))
    picked, seen = [], set()
    for c in cases:
        sig = (c["method"], c["host"].endswith("s3.example.internal"), bool(c["raw_query"]), c["key"] is None)
        if sig in seen and len(picked) >= count // 2:
            continue
        seen.add(sig)
        picked.append(c)
        if len(picked) == count:
            break
    for i, c in enumerate(picked):
        t = c["raw_path"] + ("?" + c["raw_query"] if c["raw_query"] else "")
        write(target, f"botocore-{i:02}", request(c["method"], t, c["now"], c["headers"]))
    # The same requests, changed and marked `!` for the harness to re-sign: deep states.
    for i, c in enumerate(picked[:4]):
        t = c["raw_path"] + ("?" + c["raw_query"] if c["raw_query"] else "")
        hs = [list(h) for h in c["headers"]]
        if kind == "header":
            for h in hs:
                if h[0].lower() == "x-amz-content-sha256":
                    h[1] = ["STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                            "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "UNSIGNED-PAYLOAD"][i]
        write(target, f"resign-{i:02}", request(c["method"], t, c["now"], hs, sign=True))

# AWS's GET Object example (sig-v4-header-based-auth) and hostile Authorization headers.
aws = [("host", "examplebucket.s3.amazonaws.com"), ("range", "bytes=0-9"),
       ("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
       ("x-amz-date", "20130524T000000Z")]
good = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
write("sigv4_header", "aws-example", request("GET", "/test.txt", "20130524T000500Z", aws + [("authorization", good)]))
for i, bad in enumerate([
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, Credential=x, SignedHeaders=host, Signature=" + "0" * 64,
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/2013052/us-east-1/s3/aws4_request,SignedHeaders=host;x-amz-date,Signature=" + "a" * 64,
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/eu-west-9/s3/aws4_request,SignedHeaders=x-amz-date;host,Signature=" + "A" * 64,
    "AWS AKIAIOSFODNN7EXAMPLE:bWq2s1WEIj+Ydj0vQ697zp+IXMU=",
]):
    write("sigv4_header", f"malformed-{i}", request("PUT", "/examplebucket/a%20b?acl", "20130524T000500Z", aws + [("authorization", bad)]))

# --- SigV2: AWS documentation examples, and `!` seeds the harness signs ------------------------
v2 = [
    ("GET", "/photos/puppy.jpg", [("host", "johnsmith.s3.amazonaws.com"), ("date", "Tue, 27 Mar 2007 19:36:42 +0000")], "bWq2s1WEIj+Ydj0vQ697zp+IXMU="),
    ("PUT", "/photos/puppy.jpg", [("host", "johnsmith.s3.amazonaws.com"), ("date", "Tue, 27 Mar 2007 21:15:45 +0000"), ("content-type", "image/jpeg"), ("content-length", "94328")], "MyyxeRY7whkBe+bq8fHCL/2kKUg="),
    ("GET", "/?prefix=photos&max-keys=50&marker=puppy", [("host", "johnsmith.s3.amazonaws.com"), ("date", "Tue, 27 Mar 2007 19:42:41 +0000")], "htDYFYduRNen8P9ZfE/s9SuKy0U="),
    ("GET", "/?acl", [("host", "johnsmith.s3.amazonaws.com"), ("date", "Tue, 27 Mar 2007 19:44:46 +0000")], "c2WLPFtWHVgbEmeEG93a4cG37dM="),
    ("DELETE", "/johnsmith/photos/puppy.jpg", [("host", "s3.amazonaws.com"), ("date", "Tue, 27 Mar 2007 21:20:26 +0000")], "lx3byBScXR6KzyMaifNkardMwNk="),
]
import email.utils, datetime
for i, (m, t, hs, sig) in enumerate(v2):
    # The gateway's clock a minute after the request's Date.
    signed = email.utils.parsedate_to_datetime(dict(hs)["date"]) + datetime.timedelta(minutes=1)
    now = signed.strftime("%Y%m%dT%H%M%SZ")
    write("sigv2", f"aws-example-{i}", request(m, t, now, hs + [("authorization", f"AWS AKIAIOSFODNN7EXAMPLE:{sig}")]))
write("sigv2", "amz-date-resign", request("GET", "/bkt/a%20b?acl&x=1", "20261127T120500Z", [
    ("host", "127.0.0.1:8080"), ("x-amz-date", "Fri, 27 Nov 2026 12:00:00 +0000"), ("x-amz-meta-b", "2"),
    ("x-amz-meta-a", " 1 "), ("authorization", "AWS APGBOBTESTKEY0000001:x=")], sign=True))
write("sigv2", "date-resign-md5", request("PUT", "/bkt/k%2Bv?partNumber=1&uploadId=a%2Fb", "20261127T120500Z", [
    ("host", "bkt.s3.example.internal"), ("date", "Fri, 27 Nov 2026 12:01:00 GMT"), ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
    ("content-type", "text/plain"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
    ("authorization", "AWS AKIDEXAMPLEDIFF00001:x=")], sign=True))
write("sigv2", "presigned-resign", request("GET", "/bkt/k?versionId=1%202&AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1795824000&Signature=x", "20261127T120000Z", [("host", "127.0.0.1")], sign=True))
write("sigv2", "presigned-vhost-resign", request("GET", "/dir/a+b?response-content-type=text%2Fplain&Signature=x&Expires=1795830000&AWSAccessKeyId=APGBOBTESTKEY0000001", "20261127T120000Z", [("host", "bkt.s3.amazonaws.com"), ("x-amz-meta-z", "1")], sign=True))
write("sigv2", "presigned-expired", request("GET", "/bkt/k?AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=10&Signature=abc%3D", "20261127T120000Z", [("host", "h")]))

# --- Addressing: the unit-test tables ----------------------------------------------------------
addr = [
    ("GET", "127.0.0.1:8080", "/", []), ("GET", "127.0.0.1:8080", "/bkt?list-type=2&prefix=a", []),
    ("HEAD", "h", "/bkt/", []), ("GET", "h", "/bkt//leading", []), ("PUT", "h", "/bkt/a%20b%2Bc+d~%C3%BC", []),
    ("GET", "bkt.s3.example.internal:8443", "/k%3D1?location", []), ("GET", "BKT.S3.Example.Internal", "/?versions", []),
    ("PUT", "h", "/bkt/k?partNumber=2&uploadId=u", [("x-amz-copy-source", "src-bucket/src%20dir/a%2Bb.txt?versionId=3HL4")]),
    ("PUT", "h", "/bkt/k", [("x-amz-copy-source", "/src-bucket//lead")]), ("POST", "h", "/bkt?delete", []),
    ("POST", "h", "/bkt/k?uploads", []), ("DELETE", "h", "/bkt/k?tagging", []), ("GET", "h", "/bkt/k?attributes", []),
    ("GET", "h", "/bkt?prefix=a&X-Amz-Signature=00&X-Amz-Date=x", []), ("PATCH", "h", "/bkt/k", []),
    ("GET", "[::1]:8080", "/192.168.1.1/k", []), ("GET", "h", "/Bad_Bucket/k", []), ("GET", "h", "/bkt/%zz", []),
    ("GET", "x.y.s3.localhost", "/k?versionId=1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb&AWSAccessKeyId=A&Signature=s", []),
    ("GET", "bkt.custom.example", "/x=y:z!'()?prefix=a%20b%2Bc%2F&encoding-type=url", [("x-fuzz-domain", ".Custom.Example")]),
    ("DELETE", "h", "/bkt/k?uploadId=u", [("connection", "close, x-amz-meta-a"), ("x-amz-meta-a", "1"), ("authorization", "AWS4-HMAC-SHA256 x")]),
]
for i, (m, host, t, extra) in enumerate(addr):
    write("addressing", f"table-{i:02}", request(m, t, "", [("host", host)] + extra))
write("addressing", "explain-url", "PUT\nhttp://access-point-test.s3.localhost:8080/Bob/report.csv?uploads\nsrc/k\n")

# --- Decide: the whole decision, bob by source address or by a harness-signed SigV4 header ------
def decide_seed(name, method, target, headers, body=None, sign=False):
    host = [] if any(k == "host" for k, _ in headers) else [("host", "127.0.0.1:8080")]
    text = request(method, target, "", host + headers, sign)
    if body is not None:
        text = text.encode() + b"--\n" + (body if isinstance(body, bytes) else body.encode())
    write("decide", name, text)


DEL = "<Delete><Object><Key>Bob/a</Key></Object><!-- c --><Object><Key>Bob/ro/b</Key></Object></Delete>"
decide_seed("get", "GET", "/access-point-test/Bob/k", [])
decide_seed("get-signed", "GET", "/access-point-test/Bob/k?x-id=GetObject", [("x-amz-content-sha256", "UNSIGNED-PAYLOAD")], sign=True)
decide_seed("list-v2", "GET", "/access-point-test?list-type=2&prefix=Bob%2Fro%2F&delimiter=%2F", [])
decide_seed("list-and-tagging", "GET", "/access-point-test?list-type=2&prefix=Bob%2F&tagging", [])
decide_seed("put", "PUT", "/access-point-test/Bob/k", [("content-length", "5"), ("x-amz-meta-a", "b")])
decide_seed("put-acl-header", "PUT", "/access-point-test/Bob/acl/k", [("content-length", "0"), ("x-amz-acl", "public-read")])
decide_seed("put-kms-key", "PUT", "/access-point-test/Bob/acl/k", [("content-length", "0"), ("x-amz-server-side-encryption", "aws:kms"), ("x-amz-server-side-encryption-aws-kms-key-id", "alias/bob")])
decide_seed("put-object-acl", "PUT", "/access-point-test/Bob/acl/k?acl", [("content-length", "0")])
decide_seed("copy", "PUT", "/access-point-test/Bob/dst", [("content-length", "0"), ("x-amz-copy-source", "/access-point-test/Bob/ro/src%20a")])
decide_seed("upload-part", "PUT", "/access-point-test/Bob/k?partNumber=1&uploadId=u", [("content-length", "5")])
decide_seed("vhost", "GET", "/Bob/k", [("host", "access-point-test.s3.localhost")])
decide_seed("ops", "DELETE", "/logs/2026/x", [("x-fuzz-remote", "10.0.0.1")])
decide_seed("delete-objects", "POST", "/access-point-test?delete", [("content-length", str(len(DEL)))], DEL)
split = DEL.index("-->") + 1
chunks = "".join(f"{len(p):x}\r\n{p}\r\n" for p in (DEL[:split], DEL[split:])) + "0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
decide_seed(
    "delete-objects-chunked",
    "POST",
    "/access-point-test?delete",
    [
        ("transfer-encoding", "chunked"),
        ("content-encoding", "aws-chunked"),
        ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ("x-amz-decoded-content-length", str(len(DEL))),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
    ],
    chunks,
)
# DeleteObjects is routed per key: a bypass asked for keys whose route does not allow it (the
# bucket's longest delete route, Bob/acl/, does), and keys of another access point's route.
DEL_LOCKED = "<Delete><Object><Key>Bob/locked</Key><VersionId>v1</VersionId></Object></Delete>"
decide_seed("delete-objects-bypass", "POST", "/access-point-test?delete", [("content-length", str(len(DEL_LOCKED))), ("x-amz-bypass-governance-retention", "true")], DEL_LOCKED)
DEL_TEAM = "<Delete><Object><Key>T/a</Key></Object><Object><Key>T/b</Key></Object></Delete>"
decide_seed("delete-objects-team", "POST", "/access-point-test?delete", [("content-length", str(len(DEL_TEAM)))], DEL_TEAM)
decide_seed("put-plain-says-aws-chunked", "PUT", "/access-point-test/Bob/k", [("content-length", "5"), ("content-encoding", "gzip, aws-chunked")])
decide_seed("restore", "POST", "/access-point-test/Bob/k?restore", [("content-length", "36")], "<RestoreRequest><Days>1</Days></RestoreRequest>")

# --- Config: the example files, with inline secrets so they validate ---------------------------
for name in sorted(os.listdir(os.path.join(ROOT, "config"))):
    text = open(os.path.join(ROOT, "config", name)).read()
    write("config", name, text)
    inline = text
    import re
    inline = re.sub(r'\{\s*env\s*=\s*"[^"]*"\s*\}', '{ insecure_inline = "inline-secret-0123456789" }', inline)
    if inline != text:
        write("config", "inline-" + name, inline)
minimal = open(os.path.join(ROOT, "config", "demo.toml")).read()
minimal = re.sub(r'\{\s*env\s*=\s*"[^"]*"\s*\}', '{ insecure_inline = "inline-secret-0123456789" }', minimal)
write("config", "routes-overlap", minimal + """
[[routes]]
identity = "bob"
bucket = "access-point-test"
prefix = "Bob/ro/"
operations = ["read"]
access_point = "arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/bob-ro"

[[routes]]
identity = "app"
bucket = "other.bucket"
prefix = ""
operations = ["delete", "write"]
access_point = "arn:aws:s3:us-east-1:123456789012:accesspoint/app-all"
""")
write("config", "bad-values", """[admin]
address = "127.0.0.1:99999"
[server]
header_read_timeout_seconds = -1.0
max_header_bytes = 10
[[listeners]]
name = ""
address = "nope"
identity_methods = ["sigv5", "sigv4", "sigv4"]
[addressing]
virtual_host_domains = [".S3.Local", "bad..domain", ""]
[upstream]
region = ""
endpoint = { mode = "custom", url = "ftp://x" }
[credentials]
type = "static"
access_key_id = { env = "" }
secret_access_key = { insecure_inline = "", env = "X" }
[[routes]]
identity = "ghost"
bucket = "Bad_Bucket"
access_point = "arn:aws:s3:us-east-1:12:accesspoint/x"
operations = ["read", "read", "fly"]
""")

# --- XML: the unit-test bodies, each with a view-selector byte ----------------------------------
xml = [
    '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bob-ap-123456789012-s3alias</Name><Prefix>Bob/</Prefix><Contents><Key>Bob/Name</Key></Contents></ListBucketResult>',
    "<CompleteMultipartUploadResult><Location>https://bob-ap-123456789012.s3-accesspoint.us-east-1.amazonaws.com/Bob/a%20b</Location><Bucket>real-bucket</Bucket><Key>Bob/a b</Key><ETag>&quot;x-2&quot;</ETag></CompleteMultipartUploadResult>",
    "<InitiateMultipartUploadResult><Bucket>arn:aws:s3:us-east-1:123456789012:accesspoint/bob-ap</Bucket><Key>k</Key><UploadId>u</UploadId></InitiateMultipartUploadResult>",
    "<Error><Code>NoSuchBucket</Code><BucketName>real &amp; bucket</BucketName><Endpoint>x.s3-accesspoint.amazonaws.com</Endpoint></Error>",
    "<ListPartsResult><Bucket/><Key>k</Key></ListPartsResult>",
    "<a><b></a>",
    '<?xml version="1.0"?><!DOCTYPE x><!-- c --><?pi x?><s:R xmlns:s="u"><s:Name><![CDATA[ap]]>&#x41;</s:Name><Other><Name>in</Name></Other><Name x="1">t</Name></s:R>',
    '<?xml version="1.0" encoding="UTF-8"?>\n<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>Bob/a &amp; b&lt;c&gt;</Key><VersionId>v1</VersionId></Object><Object><Key>Bob/&#252;&#x2B;</Key></Object><Object><Key><![CDATA[Bob/cdata]]></Key></Object><Quiet>true</Quiet></Delete>',
    "<Delete><Object><Key>x</Key></Object>",
    "<Delete><Object><Key/></Object><Object><Key>a &bogus; b</Key></Object></Delete>",
]
for i, body in enumerate(xml):
    write("xml_rewrite", f"body-{i:02}", bytes([i % 3]) + body.encode())

# --- aws-chunked: structured programs and raw signed bodies -------------------------------------
def prog(flags, delta, ops):
    return bytes([flags]) + struct.pack("<h", delta) + b"".join(ops)

def data_chunk(n, fill=b"a", big=False, sigmode=0, upper=False, no_crlf=False):
    op = 0 | (0x80 if big else 0) | (sigmode << 3) | (0x40 if upper else 0) | (0x20 if no_crlf else 0)
    return bytes([op]) + struct.pack("<H", n) + bytes([len(fill)]) + fill

FINAL = bytes([3])
def trailer(line):
    return bytes([4, len(line)]) + line
TSIG = bytes([5])
for i, (flags, ops) in enumerate([
    (0b01, [data_chunk(0, b"x", big=True), data_chunk(100, b"yz"), FINAL, bytes([7])]),
    (0b11, [data_chunk(10, b"q", big=True), data_chunk(5, b"abc"), FINAL, trailer(b"x-amz-checksum-crc32:AAAAAA=="), TSIG]),
    (0b00, [data_chunk(300, b"n"), FINAL, bytes([7])]),
    (0b01 | (3 << 3), [data_chunk(20, b"u", upper=True), FINAL, bytes([7])]),
    (0b01 | (1 << 3), [data_chunk(7, b"s", big=True), data_chunk(9, b"t", sigmode=2), FINAL, bytes([7])]),
    (0b11 | (6 << 3), [data_chunk(1, b"v"), FINAL, trailer(b"X-Amz-Checksum-Sha256 : abc"), trailer(b"x-amz-meta:1"), bytes([0x85])]),
    (0b01, [data_chunk(3, b"w"), data_chunk(3, b"w"), FINAL, bytes([7])]),
    (0b01, [data_chunk(4, b"r", sigmode=3) + bytes([1]), FINAL]),
    (0b01, [data_chunk(2, b"p", no_crlf=True), bytes([6, 3]) + b"zz\n", FINAL, bytes([7])]),
    (0b10, [data_chunk(5, b"o"), FINAL, trailer(b"x-amz-checksum-crc32c:sOO8/Q=="), bytes([0x45]), trailer(b"x-amz-meta-a:1"), bytes([7])]),
]):
    write("aws_chunked", f"program-{i}", prog(flags, 0, ops))

def skey(secret):
    k = hmac.new(b"AWS4" + secret.encode(), b"20261127", hashlib.sha256).digest()
    for part in (b"us-east-1", b"s3", b"aws4_request"):
        k = hmac.new(k, part, hashlib.sha256).digest()
    return k

def chunk_sig(key, prev, data):
    sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", "20261127T120000Z", "20261127/us-east-1/s3/aws4_request", prev,
                     hashlib.sha256(b"").hexdigest(), hashlib.sha256(data).hexdigest()])
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()

def trailer_sig(key, prev, canonical):
    sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", "20261127T120000Z", "20261127/us-east-1/s3/aws4_request", prev,
                     hashlib.sha256(canonical).hexdigest()])
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()

def encode(data, chunk, trailer_line=None):
    key, prev, out = skey("client-secret-0123456789"), "1" * 64, b""
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for p in pieces:
        sig = chunk_sig(key, prev, p)
        out += f"{len(p):x};chunk-signature={sig}\r\n".encode() + (p + b"\r\n" if p else b"")
        prev = sig
    if trailer_line is None:
        return out + b"\r\n"
    sig = trailer_sig(key, prev, trailer_line + b"\n")
    return out + trailer_line + b"\r\nx-amz-trailer-signature:" + sig.encode() + b"\r\n\r\n"

for i, (flags, n, chunk, t) in enumerate([
    (0b101, 9000, 8192, None),
    (0b111 | (2 << 3), 100, 8192, b"x-amz-checksum-crc32:AAAAAA=="),
    (0b100 | (0 << 3), 17, 8192, None),
    (0b101 | (5 << 3), 0, 8192, None),
]):
    data = bytes((j * 31) % 251 for j in range(n))
    write("aws_chunked", f"raw-signed-{i}", bytes([flags]) + struct.pack("<h", 0) + encode(data, chunk, t))

# --- Unsigned aws-chunked bodies with a checksum trailer: flags (checksum: 0 none, 1 CRC32,
# 2 SHA-256, 3 CRC64NVME; bits 2-4 the piece size), the decoded length (u16), the body ----------
import base64
SHA = base64.b64encode(hashlib.sha256(b"hello world").digest()).decode()
for i, (flags, decoded, body) in enumerate([
    (1, 11, b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"),
    (2 | (2 << 2), 11, b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Amz-Checksum-SHA256: " + SHA.encode() + b"\t\r\n\r\n"),
    (0 | (5 << 2), 11, b"b\r\nhello world\r\n0\r\n\r\n"),
    (3 | (7 << 2), 20, b"14\r\n" + b"0123456789abcdef0123" + b"\r\n0\r\nx-amz-checksum-crc64nvme:AAAAAAAAAAA=\r\n\r\n"),
    # refused: an extension, a KMS key in the trailer, an unannounced checksum, bytes after the end
    (1, 11, b"b;x=y\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"),
    (1 | (1 << 2), 11, b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n"
        b"x-amz-server-side-encryption-aws-kms-key-id:alias/other\r\n\r\n"),
    (1 | (4 << 2), 11, b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\nx-amz-checksum-sha1:AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"),
    (1 | (6 << 2), 11, b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\nb\r\n"),
    (1 | (2 << 2), 11, b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:A=======\r\n\r\n"),
]):
    write("unsigned_chunks", f"body-{i}", bytes([flags]) + struct.pack("<H", decoded) + body)

total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
for t in sorted(os.listdir(OUT)):
    print(t, len(os.listdir(os.path.join(OUT, t))))
print("total bytes", total)
