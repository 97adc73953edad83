"""A small REAPI v2 client: what test_reapi.py needs to drive a farm.

It speaks through stubs that grpc_tools.protoc generates at test time
from protos/ (our subset of REAPI) into a directory on PYTHONPATH; see
tests/python.rs. SHA-256 digests, the default ("") instance name.
"""

import hashlib

import grpc

from build.bazel.remote.execution.v2 import remote_execution_subset_pb2 as re_pb2
from build.bazel.remote.execution.v2 import remote_execution_subset_pb2_grpc as re_grpc
from google.protobuf import duration_pb2
from google.rpc import precondition_failure_pb2, status_pb2

# google.rpc.Code values the tests look for.
OK = 0
NOT_FOUND = 5
DEADLINE_EXCEEDED = 4
FAILED_PRECONDITION = 9

# Where gRPC carries a google.rpc.Status with details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# No single call may hang a test run: the longest action here sleeps 2 s.
CALL_TIMEOUT_S = 60

Stage = re_pb2.ExecutionStage


def encode(message):
    """The bytes a message is stored as. Python's encoding of these
    messages (no maps, no unknown fields) is the canonical one, so a
    digest computed here matches the server's for the same message."""
    return message.SerializeToString(deterministic=True)


def digest_of(data):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def key(digest):
    return (digest.hash, digest.size_bytes)


def subject(digest):
    """How REAPI names a missing blob in a PreconditionFailure."""
    return f"blobs/{digest.hash}/{digest.size_bytes}"


def violations(status):
    """(type, subject) of each violation in the PreconditionFailure
    details of a google.rpc.Status."""
    found = []
    for detail in status.details:
        failure = precondition_failure_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            found.extend((v.type, v.subject) for v in failure.violations)
    return found


def rpc_status(error):
    """The google.rpc.Status a gRPC error carries in its trailers, or one
    built from its code and message when it carries none."""
    for name, value in error.trailing_metadata() or ():
        if name == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


class Prepared:
    """An Action and every blob it needs, not yet uploaded."""

    def __init__(self, action, command, input_root, files):
        self.action = action
        self.command = command
        self.action_blob = encode(action)
        self.action_digest = digest_of(self.action_blob)
        self.command_blob = encode(command)
        self.command_digest = action.command_digest
        self.input_root_blob = encode(input_root)
        self.input_root_digest = action.input_root_digest
        # The input files' contents, by digest key.
        self.files = files

    def blobs(self):
        """Every blob the action needs, the Action itself included."""
        return [self.action_blob, self.command_blob, self.input_root_blob, *self.files.values()]


def prepare(
    arguments,
    *,
    inputs=None,
    timeout_s=None,
    do_not_cache=False,
    salt=b"",
    output_paths=(),
    output_files=(),
    output_directories=(),
    platform=None,
):
    """An Action running `arguments` in an input root holding `inputs`
    (top-level file name -> contents), on `platform` (property name ->
    value) when given."""
    inputs = inputs or {}
    files = {}
    root = re_pb2.Directory()
    for name in sorted(inputs):
        data = inputs[name]
        digest = digest_of(data)
        files[key(digest)] = data
        root.files.add(name=name, digest=digest)
    command = re_pb2.Command(
        arguments=arguments,
        environment_variables=[re_pb2.Command.EnvironmentVariable(name="PATH", value="/bin:/usr/bin")],
        output_paths=sorted(output_paths),
        output_files=sorted(output_files),
        output_directories=sorted(output_directories),
    )
    action = re_pb2.Action(
        command_digest=digest_of(encode(command)),
        input_root_digest=digest_of(encode(root)),
        do_not_cache=do_not_cache,
        salt=salt,
    )
    if timeout_s is not None:
        action.timeout.CopyFrom(duration_pb2.Duration(seconds=timeout_s))
    for name in sorted(platform or {}):
        action.platform.properties.add(name=name, value=platform[name])
    return Prepared(action, command, root, files)


def channel(endpoint, credentials=None):
    """A channel to the farm: TLS with `credentials`
    (grpc.ssl_channel_credentials), plaintext without."""
    # The farm is on the loopback: never through an http_proxy.
    options = [("grpc.enable_http_proxy", 0)]
    if credentials is None:
        return grpc.insecure_channel(endpoint, options=options)
    return grpc.secure_channel(endpoint, credentials, options=options)


def bearer(token):
    """The call metadata that presents a bearer token."""
    return (("authorization", f"Bearer {token}"),)


class Client:
    """REAPI calls on `instance_name`, each with `metadata` (a bearer
    token, say), over TLS when `credentials` are given."""

    def __init__(self, endpoint, credentials=None, metadata=(), instance_name=""):
        self.channel = channel(endpoint, credentials)
        self.metadata = tuple(metadata)
        self.instance_name = instance_name
        self.cas = re_grpc.ContentAddressableStorageStub(self.channel)
        self.ac = re_grpc.ActionCacheStub(self.channel)
        self.execution = re_grpc.ExecutionStub(self.channel)

    def close(self):
        self.channel.close()

    def find_missing(self, digests):
        response = self.cas.FindMissingBlobs(
            re_pb2.FindMissingBlobsRequest(instance_name=self.instance_name, blob_digests=digests),
            timeout=CALL_TIMEOUT_S,
            metadata=self.metadata,
        )
        return {key(d) for d in response.missing_blob_digests}

    def upload(self, *blobs):
        """Stores each blob; fails unless the server stored every one."""
        request = re_pb2.BatchUpdateBlobsRequest(instance_name=self.instance_name)
        for data in blobs:
            request.requests.add(digest=digest_of(data), data=data)
        response = self.cas.BatchUpdateBlobs(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
        stored = {key(r.digest) for r in response.responses if r.status.code == OK}
        wanted = {key(digest_of(b)) for b in blobs}
        if stored != wanted:
            raise AssertionError(f"BatchUpdateBlobs did not store every blob: {response}")

    def read(self, digest):
        """A blob's contents; fails when the server does not have it."""
        response = self.cas.BatchReadBlobs(
            re_pb2.BatchReadBlobsRequest(instance_name=self.instance_name, digests=[digest]),
            timeout=CALL_TIMEOUT_S,
            metadata=self.metadata,
        )
        if len(response.responses) != 1:
            raise AssertionError(f"asked for one blob, got {len(response.responses)}")
        (blob,) = response.responses
        if blob.status.code != OK or key(blob.digest) != key(digest):
            raise AssertionError(f"BatchReadBlobs {subject(digest)}: {blob.status}")
        if digest_of(blob.data).hash != digest.hash:
            raise AssertionError(f"BatchReadBlobs {subject(digest)} returned other bytes")
        return blob.data

    def get_action_result(self, action_digest):
        return self.ac.GetActionResult(
            re_pb2.GetActionResultRequest(instance_name=self.instance_name, action_digest=action_digest),
            timeout=CALL_TIMEOUT_S,
            metadata=self.metadata,
        )

    def execute_call(self, action_digest, skip_cache_lookup=False, inline_stdout=False):
        """The Execute stream itself, for a test that cancels it."""
        request = re_pb2.ExecuteRequest(
            instance_name=self.instance_name,
            action_digest=action_digest,
            skip_cache_lookup=skip_cache_lookup,
            inline_stdout=inline_stdout,
        )
        return self.execution.Execute(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)

    def execute(self, action_digest, skip_cache_lookup=False, inline_stdout=False):
        """Every Operation the Execute stream sends, up to the done one.
        A gRPC error (a missing blob, say) is raised as grpc.RpcError."""
        return list(self.execute_call(action_digest, skip_cache_lookup, inline_stdout))

    def wait_execution(self, name):
        return self.execution.WaitExecution(
            re_pb2.WaitExecutionRequest(name=name), timeout=CALL_TIMEOUT_S, metadata=self.metadata
        )


def metadata(operation):
    meta = re_pb2.ExecuteOperationMetadata()
    if not operation.metadata.Unpack(meta):
        raise AssertionError(f"metadata is not ExecuteOperationMetadata: {operation.metadata.type_url}")
    return meta


def response(operation):
    """The ExecuteResponse of a done Operation."""
    if not operation.done:
        raise AssertionError(f"operation {operation.name} is not done")
    if operation.HasField("error"):
        raise AssertionError(f"REAPI servers must not set Operation.error: {operation.error}")
    result = re_pb2.ExecuteResponse()
    if not operation.response.Unpack(result):
        raise AssertionError(f"response is not an ExecuteResponse: {operation.response.type_url}")
    return result
