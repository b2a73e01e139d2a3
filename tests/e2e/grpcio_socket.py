#!/usr/bin/env python3
"""The grpcio (grpc C-core) client of tests/e2e/grpcio_socket.sh: every service over one channel.

    grpcio_socket.py --stubs DIR --target TARGET --socket PATH --outputs-prefix PATH

DIR holds the Python stubs generated from proto/ (python -m grpc_tools.protoc). TARGET is the
channel target: `unix:PATH` with grpcio's default channel options (the test), or `HOST:PORT` of
the daemon's loopback TCP listener (to tell the client's logic from the socket's transport).
Each check prints `PASS: grpcio_<name>` or `FAIL: grpcio_<name>: reason`; the exit status is 1
when any failed. The checks that set an explicit `:authority` run only over `unix:` targets: TCP
listeners are strict about the authority by design.
"""

import argparse
import hashlib
import os
import sys
import urllib.parse
import uuid

import grpc

INSTANCE = "local/grpcio"
MIB = 1 << 20
TIMEOUT = 20  # seconds per call: a hang is a failure, not a stuck test

failures = 0


def ok(name):
    print(f"PASS: grpcio_{name}", flush=True)


def bad(name, why):
    global failures
    failures += 1
    why = " ".join(str(why).split())
    print(f"FAIL: grpcio_{name}: {why[:600]}", flush=True)


def note(text):
    print(f"# {text}", flush=True)


def rpc_error(e):
    return f"{e.code().name}: {e.details()}"


def check(name, fn):
    """Runs fn (which raises AssertionError or grpc.RpcError on failure); one result line."""
    try:
        fn()
    except AssertionError as e:
        bad(name, e or "assertion failed")
        return False
    except grpc.RpcError as e:
        bad(name, rpc_error(e))
        return False
    except Exception as e:  # a bug in the test itself still gets its line
        bad(name, f"{type(e).__name__}: {e}")
        return False
    ok(name)
    return True


def expect_code(code, call, what):
    """call() must raise grpc.RpcError with `code`; returns the error."""
    try:
        result = call()
    except grpc.RpcError as e:
        assert e.code() == code, f"{what}: expected {code.name}, got {rpc_error(e)}"
        return e
    raise AssertionError(f"{what}: expected {code.name}, got a result: {str(result)[:200]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--socket", required=True, help="the daemon's UNIX socket path")
    parser.add_argument("--http", required=True, help="the daemon's HTTP listener, http://HOST:PORT")
    parser.add_argument("--outputs-prefix", required=True,
                        help="the mount's outputs/ path, as Bazel's --experimental_remote_output_service_output_path_prefix")
    args = parser.parse_args()

    sys.path.insert(0, args.stubs)
    global re_pb, re_grpc, bs_pb, bs_grpc, os_pb, os_grpc, rev2_pb, stats_pb, stats_grpc, any_pb
    from build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb
    from build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
    from google.bytestream import bytestream_pb2 as bs_pb
    from google.bytestream import bytestream_pb2_grpc as bs_grpc
    from bazel_output_service import bazel_output_service_pb2 as os_pb
    from bazel_output_service import bazel_output_service_pb2_grpc as os_grpc
    from bazel_output_service import bazel_output_service_rev2_pb2 as rev2_pb
    from clientd.v1 import stats_pb2 as stats_pb
    from clientd.v1 import stats_pb2_grpc as stats_grpc
    from google.protobuf import any_pb2 as any_pb

    note(f"grpcio {grpc.__version__}, target {args.target}, instance {INSTANCE}")
    # Default options over the socket: what any grpcio user gets (grpcio 1.85 sends the socket path,
    # percent-encoded and without its leading slash, as :authority). Over TCP no http_proxy.
    options = [] if args.target.startswith("unix:") else [("grpc.enable_http_proxy", 0)]
    channel = grpc.insecure_channel(args.target, options=options)
    Checks(channel, args).run()
    channel.close()

    if args.target.startswith("unix:"):
        authority_checks(args.target, args.socket)
    else:
        note("explicit :authority checks skipped: they are for the UNIX socket (TCP listeners are strict)")
    check("metrics_parse", lambda: metrics_checks(args.http))
    check("http_page_and_errors", lambda: page_checks(args.http))
    return 1 if failures else 0


def http_get(url, method="GET"):
    """(status, content type, body) of a request; errors are answers too."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=TIMEOUT) as r:
            return r.status, r.headers.get("content-type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read().decode()


def metrics_checks(base):
    """/metrics, parsed by prometheus_client's own text-format parser, after the calls above."""
    from prometheus_client.parser import text_string_to_metric_families
    status, content_type, text = http_get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser strips _total from counter family names.
    for name in ("clientd_action_cache_hits", "clientd_action_cache_misses", "clientd_blobs_stored",
                 "clientd_stored_bytes", "clientd_served_bytes"):
        assert name in families and families[name].type == "counter", f"{name}: {sorted(families)}"
    value = lambda name: families[name].samples[0].value
    assert value("clientd_action_cache_hits") >= 1 and value("clientd_action_cache_misses") >= 1, \
        (value("clientd_action_cache_hits"), value("clientd_action_cache_misses"))
    assert value("clientd_blobs_stored") >= 1 and value("clientd_stored_bytes") >= 1
    assert families["clientd_upstream_request_duration_seconds"].type == "histogram"
    # The daemon's own time per method on the front, for the calls this client made above.
    front = families["clientd_request_duration_seconds"]
    assert front.type == "histogram", front.type
    counts = {s.labels["method"]: s.value for s in front.samples if s.name.endswith("_count")}
    assert counts.get("GetActionResult", 0) >= 2 and counts.get("Read", 0) >= 1, counts
    assert families["clientd_cluster_up"].type == "gauge"
    note(f"/metrics: {len(families)} families, {len(text.splitlines())} lines")


def page_checks(base):
    status, content_type, body = http_get(base + "/")
    assert status == 200 and content_type.startswith("text/html"), (status, content_type)
    assert "<h1>clientd</h1>" in body and "action_cache_hits" in body, body[:300]
    status, _, _ = http_get(base + "/", method="POST")
    assert status == 405, status
    status, _, body = http_get(base + "/no-such-page")
    assert status == 404 and "/metrics" in body, (status, body)


def sha256(data):
    return re_pb.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def dkey(d):
    return (d.hash, d.size_bytes)


def capabilities_have_sha256(stub, what):
    caps = stub.GetCapabilities(re_pb.GetCapabilitiesRequest(instance_name=INSTANCE), timeout=TIMEOUT)
    functions = list(caps.cache_capabilities.digest_functions)
    assert re_pb.DigestFunction.SHA256 in functions, (
        f"{what}: SHA256 not among digest functions {[re_pb.DigestFunction.Name(f) for f in functions]}")
    return caps


def authority_checks(target, socket_path):
    """GetCapabilities on channels that send an explicit :authority, each one a real client's."""
    authorities = [
        ("socket_path", socket_path),  # grpc-java (Bazel) sends the path itself
        ("localhost", "localhost"),  # grpc-go
        # grpc C-core's default: the percent-encoded path without its leading slash
        ("percent_encoded", urllib.parse.quote(socket_path.lstrip("/"), safe="")),
    ]
    for label, authority in authorities:
        def call(authority=authority):
            with grpc.insecure_channel(target, options=[("grpc.default_authority", authority)]) as ch:
                capabilities_have_sha256(re_grpc.CapabilitiesStub(ch), f":authority {authority!r}")
        check(f"authority_{label}", call)


class Checks:
    def __init__(self, channel, args):
        self.args = args
        self.caps = re_grpc.CapabilitiesStub(channel)
        self.cas = re_grpc.ContentAddressableStorageStub(channel)
        self.ac = re_grpc.ActionCacheStub(channel)
        self.execution = re_grpc.ExecutionStub(channel)
        self.bs = bs_grpc.ByteStreamStub(channel)
        self.outputs = os_grpc.BazelOutputServiceStub(channel)
        self.stats = stats_grpc.StatsStub(channel)
        # Unique per run: a reused cache directory must not make uploads no-ops.
        self.salt = uuid.uuid4().hex.encode()
        self.small = {name: b"grpcio %s %s\n" % (name.encode(), self.salt) for name in ("a", "b", "c")}

    def run(self):
        first = check("capabilities", self.capabilities)
        if not first:
            note("the first call failed; if INTERNAL / RST_STREAM(PROTOCOL_ERROR) over unix:, the daemon "
                 "refused grpc C-core's :authority (the percent-encoded socket path)")
        for name, fn in [
            ("cas_find_missing_blobs", self.find_missing),
            ("cas_batch_update_blobs", self.batch_update),
            ("cas_batch_read_blobs", self.batch_read),
            ("cas_get_tree", self.get_tree),
            ("bytestream_write_multi_chunk", self.bs_write),
            ("bytestream_read", self.bs_read),
            ("bytestream_read_offset", self.bs_read_offset),
            ("bytestream_resumable_write", self.bs_resumable),
            ("bytestream_digest_mismatch", self.bs_mismatch),
            ("bytestream_malformed_resource_name", self.bs_malformed),
            ("cas_batch_limits", self.batch_limits),
            ("long_input_short_error", self.long_input),
            ("message_over_limit_resource_exhausted", self.message_limit),
            ("action_cache_round_trip", self.ac_round_trip),
            ("action_cache_not_found", self.ac_not_found),
            ("execution_local_unimplemented", self.execute_local),
            ("stats_server_info", self.server_info),
            ("output_service_start_build", self.start_build),
        ]:
            check(name, fn)
        # StageArtifacts answers for two artifacts in one call: one result line each.
        staged = self.stage()
        for name, why in staged:
            if why is None:
                ok(name)
            else:
                bad(name, why)
        for name, fn in [
            ("output_service_batch_stat", self.batch_stat),
            ("output_service_finalize_build", self.finalize_build),
            ("output_service_clean", self.clean),
        ]:
            check(name, fn)

    # --- Capabilities ---------------------------------------------------------------------------
    def capabilities(self):
        caps = capabilities_have_sha256(self.caps, "GetCapabilities")
        assert caps.cache_capabilities.action_cache_update_capabilities.update_enabled, \
            "action cache updates are not enabled"

    # --- CAS ------------------------------------------------------------------------------------
    def find_missing(self):
        digests = [sha256(b) for b in self.small.values()]
        missing = self.cas.FindMissingBlobs(
            re_pb.FindMissingBlobsRequest(instance_name=INSTANCE, blob_digests=digests), timeout=TIMEOUT)
        got = sorted(dkey(d) for d in missing.missing_blob_digests)
        assert got == sorted(dkey(d) for d in digests), f"before upload: missing {got}, expected all 3"

    def batch_update(self):
        requests = [re_pb.BatchUpdateBlobsRequest.Request(digest=sha256(b), data=b) for b in self.small.values()]
        response = self.cas.BatchUpdateBlobs(
            re_pb.BatchUpdateBlobsRequest(instance_name=INSTANCE, requests=requests), timeout=TIMEOUT)
        assert len(response.responses) == len(requests), f"{len(response.responses)} responses for {len(requests)}"
        for r in response.responses:
            assert r.status.code == 0, f"{r.digest.hash}: status {r.status.code} {r.status.message}"
        missing = self.cas.FindMissingBlobs(
            re_pb.FindMissingBlobsRequest(instance_name=INSTANCE, blob_digests=[q.digest for q in requests]),
            timeout=TIMEOUT)
        assert not missing.missing_blob_digests, \
            f"still missing after upload: {[dkey(d) for d in missing.missing_blob_digests]}"

    def batch_read(self):
        absent = sha256(b"never uploaded " + self.salt)
        digests = [sha256(b) for b in self.small.values()] + [absent]
        response = self.cas.BatchReadBlobs(
            re_pb.BatchReadBlobsRequest(instance_name=INSTANCE, digests=digests), timeout=TIMEOUT)
        by_key = {dkey(r.digest): r for r in response.responses}
        for data in self.small.values():
            r = by_key.get(dkey(sha256(data)))
            assert r is not None, f"no response for {sha256(data).hash}"
            assert r.status.code == 0, f"{r.digest.hash}: status {r.status.code} {r.status.message}"
            assert r.data == data, f"{r.digest.hash}: read {r.data[:40]!r}, wrote {data[:40]!r}"
        r = by_key.get(dkey(absent))
        assert r is not None, "no response for the absent blob"
        assert r.status.code == grpc.StatusCode.NOT_FOUND.value[0], \
            f"absent blob: status {r.status.code} {r.status.message}, expected NOT_FOUND"

    def batch_limits(self):
        """Batches over the advertised 4 MiB are refused (REAPI: INVALID_ARGUMENT), and client sizes
        that would wrap a 64-bit sum are no way around it."""
        blobs = [os.urandom(MIB) for _ in range(5)]
        requests = [re_pb.BatchUpdateBlobsRequest.Request(digest=sha256(b), data=b) for b in blobs]
        e = expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: self.cas.BatchUpdateBlobs(
                            re_pb.BatchUpdateBlobsRequest(instance_name=INSTANCE, requests=requests),
                            timeout=TIMEOUT),
                        "BatchUpdateBlobs of 5 MiB")
        assert "max_batch_total_size_bytes" in e.details(), e.details()
        huge = (1 << 63) - 1
        digests = [re_pb.Digest(hash="a" * 64, size_bytes=huge), re_pb.Digest(hash="b" * 64, size_bytes=huge),
                   re_pb.Digest(hash="c" * 64, size_bytes=3)]
        expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: self.cas.BatchReadBlobs(
                        re_pb.BatchReadBlobsRequest(instance_name=INSTANCE, digests=digests), timeout=TIMEOUT),
                    "BatchReadBlobs of sizes that wrap to 1")

    def message_limit(self):
        """A message over the 16 MiB limit gets RESOURCE_EXHAUSTED (gRPC's "send less"), unary or
        in a stream; OUT_OF_RANGE means a read offset past the end in REAPI."""
        big = os.urandom(17 * MIB)
        d = sha256(big)
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED,
                    lambda: self.cas.BatchUpdateBlobs(
                        re_pb.BatchUpdateBlobsRequest(
                            instance_name=INSTANCE,
                            requests=[re_pb.BatchUpdateBlobsRequest.Request(digest=d, data=big)]),
                        timeout=TIMEOUT),
                    "BatchUpdateBlobs of one 17 MiB message")
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED,
                    lambda: self.bs.Write(iter([bs_pb.WriteRequest(resource_name=self.upload_name(d), data=big,
                                                                   finish_write=True)]), timeout=TIMEOUT),
                    "Write of one 17 MiB message")

    def long_input(self):
        """A 100 KB instance name or resource name gets INVALID_ARGUMENT with a short message (a
        message quoting it whole would exceed the client's 8 KiB header limit)."""
        long = "nowhere/" + "x" * 100_000
        e = expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: self.cas.FindMissingBlobs(
                            re_pb.FindMissingBlobsRequest(instance_name=long), timeout=TIMEOUT),
                        "FindMissingBlobs with a 100 KB instance name")
        assert len(e.details()) < 1000, f"{len(e.details())}-character message"
        name = f"{INSTANCE}/blobs/{'a' * 64}/1/" + "y" * 100_000
        e = expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: list(self.bs.Read(bs_pb.ReadRequest(resource_name=name), timeout=TIMEOUT)),
                        "Read with a 100 KB trailing segment")
        assert len(e.details()) < 1000, f"{len(e.details())}-character message"

    def get_tree(self):
        a, b = self.small["a"], self.small["b"]
        sub = re_pb.Directory(files=[re_pb.FileNode(name="b.txt", digest=sha256(b))])
        sub_bytes = sub.SerializeToString(deterministic=True)
        root = re_pb.Directory(
            files=[re_pb.FileNode(name="a.txt", digest=sha256(a), is_executable=True)],
            directories=[re_pb.DirectoryNode(name="sub", digest=sha256(sub_bytes))])
        root_bytes = root.SerializeToString(deterministic=True)
        response = self.cas.BatchUpdateBlobs(re_pb.BatchUpdateBlobsRequest(instance_name=INSTANCE, requests=[
            re_pb.BatchUpdateBlobsRequest.Request(digest=sha256(d), data=d) for d in (sub_bytes, root_bytes)
        ]), timeout=TIMEOUT)
        assert all(r.status.code == 0 for r in response.responses), "uploading the directories failed"
        directories = []
        for page in self.cas.GetTree(
                re_pb.GetTreeRequest(instance_name=INSTANCE, root_digest=sha256(root_bytes)), timeout=TIMEOUT):
            directories.extend(page.directories)
        got = sorted(d.SerializeToString(deterministic=True) for d in directories)
        assert got == sorted([root_bytes, sub_bytes]), \
            f"GetTree returned {len(directories)} directories, not the root and sub: {directories}"

    # --- ByteStream -----------------------------------------------------------------------------
    @staticmethod
    def upload_name(digest):
        return f"{INSTANCE}/uploads/{uuid.uuid4()}/blobs/{digest.hash}/{digest.size_bytes}"

    @staticmethod
    def read_name(digest):
        return f"{INSTANCE}/blobs/{digest.hash}/{digest.size_bytes}"

    @staticmethod
    def chunks(name, data, start, end, finish, chunk=MIB):
        """WriteRequests for data[start:end] in `chunk`-sized pieces; finish_write on the last if finish."""
        pos = start
        while True:
            piece = data[pos:min(pos + chunk, end)]
            last = pos + len(piece) >= end
            yield bs_pb.WriteRequest(resource_name=name if pos == start else "", write_offset=pos,
                                     data=piece, finish_write=finish and last)
            pos += len(piece)
            if last:
                return

    def read_all(self, digest, offset=0, limit=0):
        pieces = []
        for response in self.bs.Read(bs_pb.ReadRequest(resource_name=self.read_name(digest),
                                                       read_offset=offset, read_limit=limit), timeout=TIMEOUT):
            pieces.append(response.data)
        return b"".join(pieces), len(pieces)

    def bs_write(self):
        self.big = os.urandom(3 * MIB)
        self.big_digest = sha256(self.big)
        requests = list(self.chunks(self.upload_name(self.big_digest), self.big, 0, len(self.big), True))
        assert len(requests) == 3, f"{len(requests)} chunks"
        response = self.bs.Write(iter(requests), timeout=TIMEOUT)
        assert response.committed_size == len(self.big), \
            f"committed_size {response.committed_size}, expected {len(self.big)}"
        missing = self.cas.FindMissingBlobs(
            re_pb.FindMissingBlobsRequest(instance_name=INSTANCE, blob_digests=[self.big_digest]), timeout=TIMEOUT)
        assert not missing.missing_blob_digests, "the written blob is missing from the CAS"

    def bs_read(self):
        data, pieces = self.read_all(self.big_digest)
        assert data == self.big, f"read {len(data)} bytes in {pieces} responses, differing from the 3 MiB written"

    def bs_read_offset(self):
        offset = MIB + 12345
        data, _ = self.read_all(self.big_digest, offset=offset)
        assert data == self.big[offset:], f"read_offset {offset}: {len(data)} bytes, expected {len(self.big) - offset}"
        data, _ = self.read_all(self.big_digest, offset=offset, limit=1000)
        assert data == self.big[offset:offset + 1000], f"read_offset {offset} read_limit 1000: {len(data)} bytes"

    def bs_resumable(self):
        blob = os.urandom(2 * MIB + 777)
        digest = sha256(blob)
        name = self.upload_name(digest)
        part = MIB + 4096
        # The first stream ends without finish_write; the daemon keeps what it got and answers
        # INVALID_ARGUMENT ("resume from committed_size"), as a broken connection would leave it.
        try:
            self.bs.Write(self.chunks(name, blob, 0, part, finish=False, chunk=512 * 1024), timeout=TIMEOUT)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, \
                f"unfinished Write: expected INVALID_ARGUMENT (resume later), got {rpc_error(e)}"
        status = self.bs.QueryWriteStatus(bs_pb.QueryWriteStatusRequest(resource_name=name), timeout=TIMEOUT)
        assert status.committed_size == part and not status.complete, \
            f"QueryWriteStatus: committed_size {status.committed_size} complete {status.complete}, expected {part} False"
        response = self.bs.Write(self.chunks(name, blob, status.committed_size, len(blob), finish=True),
                                 timeout=TIMEOUT)
        assert response.committed_size == len(blob), f"resumed Write: committed_size {response.committed_size}"
        data, _ = self.read_all(digest)
        assert data == blob, f"resumed blob read back as {len(data)} bytes, differing"
        status = self.bs.QueryWriteStatus(bs_pb.QueryWriteStatusRequest(resource_name=name), timeout=TIMEOUT)
        assert status.complete and status.committed_size == len(blob), \
            f"QueryWriteStatus after finishing: committed_size {status.committed_size} complete {status.complete}"

    def bs_mismatch(self):
        data = os.urandom(MIB + 5)
        claimed = sha256(os.urandom(len(data)))  # same size, another hash
        expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                    lambda: self.bs.Write(self.chunks(self.upload_name(claimed), data, 0, len(data), True),
                                          timeout=TIMEOUT),
                    "Write with a wrong hash")
        missing = self.cas.FindMissingBlobs(
            re_pb.FindMissingBlobsRequest(instance_name=INSTANCE, blob_digests=[claimed, sha256(data)]),
            timeout=TIMEOUT)
        assert len(missing.missing_blob_digests) == 2, \
            f"after the refused Write FindMissingBlobs reports only {[dkey(d) for d in missing.missing_blob_digests]} missing"
        expect_code(grpc.StatusCode.NOT_FOUND, lambda: self.read_all(claimed), "Read of the refused blob")

    def bs_malformed(self):
        data = b"malformed " + self.salt
        d = sha256(data)
        for name in [f"{INSTANCE}/uploads/{uuid.uuid4()}/blobs/not-a-hash/{len(data)}",
                     f"{INSTANCE}/uploads/{uuid.uuid4()}/blobs/{d.hash}/minus-one",
                     f"{INSTANCE}/blobs/{d.hash}/{len(data)}"]:  # a read name: no uploads/<uuid>
            expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: self.bs.Write(iter([bs_pb.WriteRequest(resource_name=name, data=data,
                                                                       finish_write=True)]), timeout=TIMEOUT),
                        f"Write to {name!r}")
        for name in [f"{INSTANCE}/blobs/{d.hash}", f"{INSTANCE}/blobs/xyz/12", "blobs"]:
            expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: list(self.bs.Read(bs_pb.ReadRequest(resource_name=name), timeout=TIMEOUT)),
                        f"Read of {name!r}")

    # --- ActionCache ----------------------------------------------------------------------------
    def ac_round_trip(self):
        action = re_pb.Action(command_digest=sha256(b"command " + self.salt))
        action_digest = sha256(action.SerializeToString(deterministic=True))
        result = re_pb.ActionResult(
            output_files=[re_pb.OutputFile(path="out/a.txt", digest=sha256(self.small["a"])),
                          re_pb.OutputFile(path="out/c.txt", digest=sha256(self.small["c"]), is_executable=True)],
            exit_code=0,
            stdout_digest=sha256(self.small["b"]))
        self.ac.UpdateActionResult(re_pb.UpdateActionResultRequest(
            instance_name=INSTANCE, action_digest=action_digest, action_result=result), timeout=TIMEOUT)
        got = self.ac.GetActionResult(re_pb.GetActionResultRequest(
            instance_name=INSTANCE, action_digest=action_digest), timeout=TIMEOUT)
        assert list(got.output_files) == list(result.output_files), f"output_files {got.output_files}"
        assert got.stdout_digest == result.stdout_digest and got.exit_code == 0, f"got {got}"

    def ac_not_found(self):
        unknown = sha256(b"unknown action " + self.salt)
        expect_code(grpc.StatusCode.NOT_FOUND,
                    lambda: self.ac.GetActionResult(re_pb.GetActionResultRequest(
                        instance_name=INSTANCE, action_digest=unknown), timeout=TIMEOUT),
                    "GetActionResult of an unknown action")

    # --- Execution and Stats --------------------------------------------------------------------
    def execute_local(self):
        e = expect_code(grpc.StatusCode.UNIMPLEMENTED,
                        lambda: list(self.execution.Execute(re_pb.ExecuteRequest(
                            instance_name=INSTANCE, action_digest=sha256(b"action " + self.salt)),
                            timeout=TIMEOUT)),
                        "Execute on a local instance")
        assert "local cache" in e.details(), f"unexpected message: {e.details()}"

    def server_info(self):
        info = self.stats.GetServerInfo(stats_pb.GetServerInfoRequest(), timeout=TIMEOUT)
        assert info.unix_socket == self.args.socket, f"unix_socket {info.unix_socket!r}, not {self.args.socket!r}"
        self.stats.GetStats(stats_pb.GetStatsRequest(), timeout=TIMEOUT)

    # --- Output Service -------------------------------------------------------------------------
    def start_build(self):
        self.output_base_id = hashlib.sha256(self.salt).hexdigest()[:32]
        self.build_id = str(uuid.uuid4())
        start_args = any_pb.Any()
        start_args.Pack(rev2_pb.StartBuildArgs(instance_name=INSTANCE,
                                               digest_function=re_pb.DigestFunction.SHA256))
        response = self.outputs.StartBuild(os_pb.StartBuildRequest(
            version=1, output_base_id=self.output_base_id, build_id=self.build_id, args=start_args,
            output_path_prefix=self.args.outputs_prefix), timeout=TIMEOUT)
        # Bazel joins prefix and suffix: with the mount's outputs/ as prefix, the suffix is the id.
        assert response.output_path_suffix == self.output_base_id, \
            f"output_path_suffix {response.output_path_suffix!r}, expected {self.output_base_id!r}"
        # A new, empty output path: the protocol requires initial_output_path_contents unset.
        assert not response.HasField("initial_output_path_contents"), \
            f"initial_output_path_contents {response.initial_output_path_contents}"

    @staticmethod
    def file_locator(digest):
        locator = any_pb.Any()
        locator.Pack(rev2_pb.FileArtifactLocator(digest=digest))
        return locator

    STAGED = "k8-fastbuild/bin/pkg/a.txt"
    MISSING = "k8-fastbuild/bin/pkg/missing.txt"

    def stage(self):
        present, absent = "output_service_stage_present", "output_service_stage_missing_blob"
        try:
            artifacts = [
                os_pb.StageArtifactsRequest.Artifact(path=self.STAGED,
                                                     locator=self.file_locator(sha256(self.small["a"]))),
                os_pb.StageArtifactsRequest.Artifact(
                    path=self.MISSING, locator=self.file_locator(sha256(b"not in the CAS " + self.salt))),
            ]
            response = self.outputs.StageArtifacts(
                os_pb.StageArtifactsRequest(build_id=self.build_id, artifacts=artifacts), timeout=TIMEOUT)
            self.outputs.FinalizeArtifacts(os_pb.FinalizeArtifactsRequest(
                build_id=self.build_id,
                artifacts=[os_pb.FinalizeArtifactsRequest.Artifact(path=a.path, locator=a.locator)
                           for a in artifacts[:1]]), timeout=TIMEOUT)
        except grpc.RpcError as e:
            return [(present, rpc_error(e)), (absent, rpc_error(e))]
        except AttributeError as e:  # StartBuild failed: no build_id
            return [(present, f"no build: {e}"), (absent, f"no build: {e}")]
        if len(response.responses) != 2:
            why = f"{len(response.responses)} responses for 2 artifacts"
            return [(present, why), (absent, why)]
        first, second = (r.status for r in response.responses)
        return [
            (present, None if first.code == 0 else f"status {first.code} {first.message}"),
            (absent, None if second.code == grpc.StatusCode.NOT_FOUND.value[0]
             else f"status {second.code} {second.message!r}, expected NOT_FOUND"),
        ]

    def batch_stat(self):
        response = self.outputs.BatchStat(os_pb.BatchStatRequest(
            build_id=self.build_id, paths=[self.STAGED, self.MISSING, "k8-fastbuild/bin/pkg"]), timeout=TIMEOUT)
        assert len(response.responses) == 3, f"{len(response.responses)} responses for 3 paths"
        staged, missing, directory = response.responses
        assert staged.HasField("stat") and staged.stat.HasField("file"), f"{self.STAGED}: {staged}"
        locator = rev2_pb.FileArtifactLocator()
        assert staged.stat.file.locator.Unpack(locator), \
            f"{self.STAGED}: locator is {staged.stat.file.locator.type_url}, not a FileArtifactLocator"
        assert locator.digest == sha256(self.small["a"]), f"{self.STAGED}: digest {locator.digest}"
        assert not missing.HasField("stat"), f"{self.MISSING} (never staged): stat {missing.stat}"
        assert directory.HasField("stat") and directory.stat.HasField("directory"), \
            f"k8-fastbuild/bin/pkg: {directory}"

    def finalize_build(self):
        self.outputs.FinalizeBuild(os_pb.FinalizeBuildRequest(build_id=self.build_id, build_successful=True),
                                   timeout=TIMEOUT)
        expect_code(grpc.StatusCode.FAILED_PRECONDITION,
                    lambda: self.outputs.BatchStat(os_pb.BatchStatRequest(build_id=self.build_id,
                                                                          paths=[self.STAGED]), timeout=TIMEOUT),
                    "BatchStat after FinalizeBuild")

    def clean(self):
        self.outputs.Clean(os_pb.CleanRequest(output_base_id=self.output_base_id), timeout=TIMEOUT)


if __name__ == "__main__":
    sys.exit(main())
